"""The training loop. Read `Engine.fit` top to bottom: epochs of steps, a validation pass,
checkpoints, then the per-epoch callbacks (tracking today; pruning and more later).

In a multi-process run (`group`, see collective.py) every process walks the same global
batches: each trains on its share of each one and evaluates its share of each split, and
the processes agree on every stop (a signal, a non-finite loss, a callback's decision).

What survives an interruption, and how it is saved and restored, is resume.py; the loss
recipe (label smoothing, class weights, mixup) is loss.py.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from orchard_app.data.pipeline import BatchPipeline
from orchard_app.distributed.collective import SingleProcess
from orchard_app.engine.checkpoint import Checkpointer
from orchard_app.engine.interrupts import StopSignals
from orchard_app.engine.loss import LossRecipe
from orchard_app.engine.optim import Schedule
from orchard_app.engine.resume import EpochRecord, TrainState, capture, restore
from orchard_app.errors import CheckpointError, DataError, NonFiniteLossError, TrainingInterrupted
from orchard_app.evaluation.metrics import compute_metrics
from orchard_app.rundir.layout import BEST_CHECKPOINT, LAST_CHECKPOINT
from orchard_app.rundir.logging import duration

log = logging.getLogger("orchard_app.engine")

EpochCallback = Callable[[EpochRecord, "Engine"], None]  # after validation and checkpoints
StepHook = Callable[["Engine"], None]  # after each training step (state.step is updated)
FINITE_CHECK_EVERY = 10  # steps between NaN/inf checks (each check syncs a CUDA stream)


@dataclass(frozen=True)
class EngineSettings:
    """The plain settings of a training run (built from the config by `run.assemble`)."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    seed: int
    monitor: str = "val_accuracy"
    mode: str = "max"  # min | max (config.monitor_direction)
    patience: int | None = None  # early stop after this many epochs without improvement
    grad_clip: float | None = None
    mixup_alpha: float = 0.0
    label_smoothing: float = 0.0
    class_weighted_loss: bool = False
    amp_dtype: torch.dtype | None = None
    tta_hflip: bool = True  # test-time augmentation averages horizontal flips (not on lateral sets)
    tta_vflip: bool = False  # test-time augmentation also averages vertical flips


def steps_per_epoch(n: int, batch_size: int) -> int:
    """A last batch of one sample would break BatchNorm in training mode: it is dropped."""
    steps = n // batch_size + (1 if n % batch_size > 1 else 0)
    if steps == 0:
        raise DataError(f"the training split has {n} sample(s); at least 2 are needed")
    return steps


class Engine:
    """Runs the parts it is given (model, data pipeline, optimiser, schedule, checkpointer);
    `run.assemble.assemble` builds them from a config."""

    def __init__(
        self,
        model: torch.nn.Module,
        pipeline: BatchPipeline,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        settings: EngineSettings,
        checkpoints: Checkpointer,
        device: torch.device,
        step_model: torch.nn.Module | None = None,
        callbacks: Sequence[EpochCallback] = (),
        step_hooks: Sequence[StepHook] = (),
        stop: StopSignals | None = None,
        group: SingleProcess | None = None,
    ):
        self.model = model
        self.step_model = step_model if step_model is not None else model  # (a compiled one)
        self.pipeline, self.optimizer, self.schedule = pipeline, optimizer, schedule
        self.settings, self.checkpoints, self.device = settings, checkpoints, device
        self.info = pipeline.data.info
        self.epochs, self.batch_size = settings.epochs, settings.batch_size
        self.monitor, self.mode = settings.monitor, settings.mode
        self.steps_per_epoch = steps_per_epoch(len(pipeline.data.train), self.batch_size)
        self.amp_dtype = settings.amp_dtype
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.loss = LossRecipe.for_data(pipeline.data, settings, device)
        self.gen = torch.Generator().manual_seed(settings.seed)  # data order, augmentation, mixup
        self.callbacks, self.step_hooks = list(callbacks), list(step_hooks)
        self.stop = stop or StopSignals()
        self.group = group or SingleProcess()
        self.state = TrainState()
        self.best_model_state: dict[str, torch.Tensor] | None = None
        self.resumed_from: str | None = None
        self.resumed_config: dict[str, Any] = {}  # the config recorded in the resumed checkpoint

    @property
    def shape(self) -> dict[str, int]:
        """What fixes the epoch's steps; a mid-epoch resume needs the same (see resume.py)."""
        return {"train_samples": len(self.pipeline.data.train), "batch_size": self.batch_size,
                "steps_per_epoch": self.steps_per_epoch, "epochs": self.epochs}  # fmt: skip

    # ------------------------------------------------------------------ the loop
    def fit(self) -> TrainState:
        s = self.state
        with self.stop.deferred():  # a signal now only sets a flag, checked after each step
            while s.epoch < self.epochs and not s.stopped_early:
                started = time.perf_counter()
                train_loss = self._train_epoch()
                trained = time.perf_counter()
                val = self.evaluate(self.pipeline.data.val)[0]
                times = (trained - started, time.perf_counter() - trained)
                record = self._end_epoch(train_loss, val, times)
                self.group.on_main(self._run_callbacks, record)  # rank 0 decides for all
                if self.group.any(self.stop.requested):
                    raise self._interrupted()
        return s

    def _run_callbacks(self, record: EpochRecord) -> None:
        for callback in self.callbacks:
            callback(record, self)

    def _train_epoch(self) -> float:
        s, steps, bs = self.state, self.steps_per_epoch, self.batch_size
        if s.order is None:  # a fresh epoch (otherwise: resuming mid-epoch)
            s.order = self.pipeline.epoch_order(self.gen)
            s.epoch_losses = torch.zeros(steps, device=self.device)
        self.model.train()
        bar = tqdm(total=steps, initial=s.step, desc=f"epoch {s.epoch + 1}/{self.epochs}", unit="batch",
                   leave=False, dynamic_ncols=True, mininterval=0.5,
                   disable=None if self.group.is_main else True)  # fmt: skip
        checked = s.step
        for k in range(s.step, steps):
            s.epoch_losses[k] = self._train_step(*self._batch(s.order[k * bs : (k + 1) * bs]))
            if self.schedule.interval == "step":
                self.schedule.scheduler.step()
            s.step = k + 1
            for hook in self.step_hooks:
                hook(self)
            bar.update(1)
            stop = self.group.any(self.stop.requested)  # a signal to any process stops all here
            if s.step - checked >= FINITE_CHECK_EVERY or s.step == steps or stop:
                self._check_finite(checked, s.step)
                if not bar.disable:
                    bar.set_postfix(loss=f"{s.epoch_losses[checked : s.step].mean().item():.4f}")
                checked = s.step
            if stop and s.step < steps:
                bar.close()
                self.save_last()
                raise self._interrupted()
        bar.close()
        return float(s.epoch_losses.mean().item())

    def _batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float | None]:
        """Inputs, targets and loss denominator (see `LossRecipe`) of this process's share of
        the global batch `idx`. Every process draws the augmentation and mixup of the whole
        batch from the same generator state, so N processes train on the batches of one."""
        part = self.group.shard(len(idx))
        if self.loss.mixup_alpha > 0:  # mixing partners come from the whole batch
            x, target = self.loss.mixup(*self.pipeline.train_batch(idx, self.gen), self.gen)
            if part is not None:
                x, target = x[part], target[part]
        else:
            x, target = self.pipeline.train_batch(idx, self.gen, part)
        return x, target, None if part is None else self.loss.denominator(idx)

    def _train_step(
        self, x: torch.Tensor, target: torch.Tensor, denominator: float | None = None
    ) -> torch.Tensor:
        with self._autocast():
            logits = self.step_model(x)
        loss = self._loss(logits.float(), target, train=True, denominator=denominator)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()

    def _end_epoch(
        self, train_loss: float, val: dict[str, float], times: tuple[float, float]
    ) -> EpochRecord:
        s = self.state
        epoch = s.epoch + 1
        record = EpochRecord(
            epoch=epoch, train_loss=train_loss, **{f"val_{k}": v for k, v in val.items()},
            lr=self.optimizer.param_groups[0]["lr"], seconds=round(sum(times), 3),
            train_seconds=round(times[0], 3), val_seconds=round(times[1], 3),
        )  # fmt: skip
        value = record[self.monitor]
        improved = self._improves(value, record.val_loss)
        if improved:
            s.best_value, s.best_epoch, s.best_loss, s.bad_epochs = value, epoch, record.val_loss, 0
            self.best_model_state = {
                k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
            }
            best = {"model": self.best_model_state, "epoch": epoch, "metrics": record.to_dict()}
            self.checkpoints.save(BEST_CHECKPOINT, best)
        else:
            s.bad_epochs += 1
        if self.settings.patience and s.bad_epochs >= self.settings.patience:
            s.stopped_early = True
        if self.schedule.interval == "epoch":
            self.schedule.scheduler.step()
        elif self.schedule.interval == "plateau":
            self.schedule.scheduler.step(value)
        s.history.append(record)
        s.epoch, s.step, s.order, s.epoch_losses = epoch, 0, None, None
        self.save_last()
        self._log_epoch(record, improved)
        return record

    def _improves(self, value: float, val_loss: float) -> bool:
        """Better on the monitor; on a tie (common for accuracy on small validation sets), lower
        val loss. A NaN is never better than anything, not even than no best at all."""
        s = self.state
        if math.isnan(value):
            return False
        if s.best_value is None:
            return True
        if value == s.best_value and self.monitor != "val_loss":
            return val_loss < s.best_loss
        return value > s.best_value if self.mode == "max" else value < s.best_value

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, split, tta: bool = False) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
        """Metrics (with `loss`), probabilities and labels for a split, in one pass. Each
        process evaluates its contiguous share; the metrics cover exactly the split's samples."""
        self.model.eval()
        self.group.sync_buffers(self.model)
        probs, labels, loss_sum = [], [], 0.0
        flips = [()] + [(3,)] * self.settings.tta_hflip + [(2,)] * self.settings.tta_vflip
        part = self.group.shard(len(split))
        for x, y in self.pipeline.eval_batches(split, self.settings.eval_batch_size, part):
            views = flips if tta else [()]
            p = 0
            for dims in views:
                with self._autocast():
                    logits = self.model(x.flip(dims) if dims else x).float()
                if not dims:
                    loss_sum += float(self._loss(logits, y, train=False)) * len(y)
                p = p + (
                    torch.sigmoid(logits) if self.info.multilabel else torch.softmax(logits, 1)
                )
            probs.append((p / len(views)).cpu())
            labels.append(y.cpu())
        if part is not None:  # this process's share, possibly empty; then all of them
            probs.append(torch.zeros(0, self.info.num_classes))
            labels.append(split.labels[:0].cpu())
            probs = [self.group.gather(torch.cat(probs), len(split))]
            labels = [self.group.gather(torch.cat(labels), len(split))]
            loss_sum = self.group.sum(loss_sum)
        probs_np, labels_np = torch.cat(probs).numpy(), torch.cat(labels).numpy()
        metrics = {"loss": loss_sum / len(labels_np), **compute_metrics(self.info.task, labels_np, probs_np)}  # fmt: skip
        return self.group.broadcast(metrics), probs_np, labels_np

    def load_best(self) -> None:
        """Put the best checkpoint's weights into the model (for the test evaluation)."""
        if self.best_model_state is None and self.state.history:  # the same on every process
            error = NonFiniteLossError(
                f"training.monitor={self.monitor} was NaN in all {len(self.state.history)} epochs, "
                "so no epoch could be selected as the best (e.g. AUC is undefined on a validation "
                "split with a single class).\n  Monitor another metric, e.g. "
                "training.monitor=val_loss, or check the validation split."
            )
            raise self.group.together(error)
        if self.best_model_state is None:
            raise CheckpointError("no best checkpoint: training ran no epoch")
        self.model.load_state_dict(self.best_model_state)

    # ------------------------------------------------------------------ pieces
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _loss(self, logits, target, train: bool, denominator: float | None = None):
        return self.loss(logits, target, train, denominator, self.group.world_size)

    def _check_finite(self, start: int, end: int) -> None:
        """Raise for a non-finite loss among steps [start, end); the losses are averaged over
        the processes first (to the whole batches' losses), so all processes agree."""
        losses = self.group.mean_(self.state.epoch_losses[start:end])
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            k = start + int(bad[0])
            last = self.checkpoints.last
            kept = (
                f"The last good checkpoint is {last} (epoch {self.state.epoch}); it was not "
                "overwritten. Resuming from it keeps its weights but applies the optimizer "
                "settings you pass now"
                if last.exists()
                else "No checkpoint was written yet"
            )
            error = NonFiniteLossError(
                f"the training loss became {float(losses[k - start])} at epoch {self.state.epoch + 1}, "
                f"step {k + 1}/{self.steps_per_epoch}. {kept}.\n"
                f"  Try a lower optimizer.lr (now {self.base_lr():g}), training.grad_clip=1.0"
                + (", or hardware.amp=false." if self.amp_dtype is not None else ".")
            )
            raise self.group.together(error)

    def base_lr(self) -> float:
        """optimizer.lr as in effect (schedules scale it step by step from this base)."""
        group = self.optimizer.param_groups[0]
        return float(group.get("initial_lr", group["lr"]))

    def _interrupted(self) -> TrainingInterrupted:
        import signal

        s, signum = self.state, self.stop.signum or signal.SIGTERM
        where = f"epoch {s.epoch + 1}, step {s.step}/{self.steps_per_epoch}" if s.step else f"the end of epoch {s.epoch}"  # fmt: skip
        last = self.checkpoints.last.resolve()
        saved = f"saved {last}" if self.checkpoints.enabled else f"rank 0 saved {LAST_CHECKPOINT}"
        error = self.stop.error(
            f"stopped by {signal.Signals(signum).name} at {where}; {saved}", signum
        )
        error.checkpoint = str(last)
        return self.group.together(error)

    def _log_epoch(self, r: EpochRecord, improved: bool) -> None:
        s = self.state
        done = [h.seconds for h in s.history[-5:]]
        eta = (self.epochs - s.epoch) * (sum(done) / len(done)) if not s.stopped_early else 0
        extra = "".join(f"  {k} {r[k]:.4f}" for k in ("val_loss", "val_accuracy", "val_auc") if k != self.monitor)  # fmt: skip
        line = (
            f"epoch {r.epoch:>{len(str(self.epochs))}}/{self.epochs}  loss {r.train_loss:.4f}  "
            f"{self.monitor} {r[self.monitor]:.4f}{' *' if improved else '  '}{extra}  lr {r.lr:.2e}  "
            f"{r.seconds:.1f}s  ETA {duration(eta)}"
        )
        if s.stopped_early:
            line += f"  (early stop: no improvement for {self.settings.patience} epochs)"
        log.info("epoch", extra={"console": line, "fields": r.to_dict()})

    # ------------------------------------------------------------------ checkpoints
    def save_last(self) -> None:
        self.checkpoints.save(LAST_CHECKPOINT, capture(self))

    def resume(self, path: Path) -> None:
        """Continue from a last.pt (see resume.py)."""
        restore(self, path)
