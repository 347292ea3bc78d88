"""The one assembly of a run: config + run context -> data, model, pipeline, optimiser and
schedule, checkpointer and engine. `train()`, the tests and `bench/` all build runs here, so a
new part (a pruning callback, a DDP wrapper) is added in one place.
(What an export needs is assembled in export/assemble.py from the same factories.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from orchard_app.config import monitor_direction
from orchard_app.config.laterality import is_lateral
from orchard_app.config.resolvers import resolved_container
from orchard_app.data.dataset import DataBundle, load_dataset
from orchard_app.data.pipeline import BatchPipeline
from orchard_app.engine.checkpoint import Checkpointer, fingerprint
from orchard_app.engine.loop import Engine, EngineSettings, EpochCallback, StepHook, steps_per_epoch
from orchard_app.engine.optim import build_optimizer, build_schedule
from orchard_app.engine.precision import amp_dtype
from orchard_app.models import build_for_data
from orchard_app.run.context import RunContext
from orchard_app.rundir import layout


@dataclass
class RunParts:
    data: DataBundle
    model: torch.nn.Module
    pipeline: BatchPipeline
    engine: Engine

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def engine_settings(cfg, device: torch.device) -> EngineSettings:
    t = cfg.training
    return EngineSettings(
        epochs=int(t.epochs), batch_size=int(t.batch_size), eval_batch_size=int(t.eval_batch_size),
        seed=int(t.seed), monitor=str(t.monitor), mode=monitor_direction(t.monitor, t.monitor_mode),
        patience=t.early_stop_patience, grad_clip=None if t.grad_clip is None else float(t.grad_clip),
        mixup_alpha=float(t.mixup_alpha), label_smoothing=float(t.label_smoothing),
        class_weighted_loss=bool(t.class_weighted_loss), amp_dtype=amp_dtype(cfg.hardware, device),
        tta_hflip=not is_lateral(cfg.dataset), tta_vflip=bool(cfg.dataset.augment.vflip),
    )  # fmt: skip


def assemble(
    cfg,
    ctx: RunContext,
    config: dict[str, Any] | None = None,
    callbacks: Sequence[EpochCallback] = (),
    step_hooks: Sequence[StepHook] = (),
) -> RunParts:
    """Build every part of a run. `config` is the resolved config recorded in checkpoints
    (resolved here when not given)."""
    seed = int(cfg.training.seed)
    data = load_dataset(cfg.dataset, seed=seed)
    info = data.info
    model = build_for_data(cfg.model, info)
    hw = cfg.hardware
    memory_format = torch.channels_last if hw.channels_last else torch.preserve_format
    model = model.to(ctx.device, memory_format=memory_format)
    settings = engine_settings(cfg, ctx.device)
    steps = steps_per_epoch(len(data.train), settings.batch_size)
    step_model = model  # what trains: DDP's wrapper in a multi-process run
    if ctx.distributed:
        from orchard_app.distributed.model import check_batches, wrap_model

        sync = bool(hw.sync_batchnorm)
        ctx.group.agree_on_data({"steps per epoch": steps, "training samples": len(data.train),
                                 "validation samples": len(data.val), "test samples": len(data.test)})  # fmt: skip
        check_batches(len(data.train), settings.batch_size, ctx.world_size, sync)
        model, step_model = wrap_model(model, ctx.group, sync)
        torch.manual_seed(seed + ctx.rank)  # each process draws its own dropout masks
    pipeline = BatchPipeline(data, cfg.dataset, ctx.device, bool(hw.channels_last))
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = build_schedule(optimizer, cfg.scheduler, float(cfg.optimizer.lr), settings.epochs,
                              steps, settings.mode)  # fmt: skip
    checkpoints = Checkpointer(
        ctx.run_dir / layout.CHECKPOINTS_DIR, fingerprint(cfg.model, info, model),
        resolved_container(cfg) if config is None else config, enabled=ctx.is_main,
    )  # fmt: skip
    engine = Engine(
        model, pipeline, optimizer, schedule, settings, checkpoints, ctx.device,
        step_model=torch.compile(step_model) if hw.compile else step_model,
        callbacks=callbacks, step_hooks=step_hooks, stop=ctx.stop, group=ctx.group,
    )  # fmt: skip
    return RunParts(data, model, pipeline, engine)
