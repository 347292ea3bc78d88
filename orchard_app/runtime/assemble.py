"""The one assembly of a run: config + run context -> data, model, pipeline, optimiser and
schedule, checkpointer and engine. `train()`, the tests and `bench/` all build runs here, so a
new part (a pruning callback, a DDP wrapper) is added in one place.

`assemble_export` builds what a deployment export needs from the same config: the data, the
preprocessing module the pipeline uses, and the model rebuilt from a checkpoint (exportable
layers, never pretrained weights: the checkpoint has them, and it works offline)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchard_app.config import monitor_direction
from orchard_app.config.resolvers import resolved_container
from orchard_app.data.dataset import DataBundle, load_dataset
from orchard_app.data.pipeline import BatchPipeline
from orchard_app.data.preprocess import Preprocess
from orchard_app.engine.checkpoint import (
    Checkpointer,
    check_compatible,
    fingerprint,
    load_checkpoint,
)
from orchard_app.engine.loop import (
    Engine,
    EngineSettings,
    EpochCallback,
    StepHook,
    steps_per_epoch,
)
from orchard_app.engine.optim import build_optimizer, build_schedule
from orchard_app.engine.precision import amp_dtype
from orchard_app.errors import CheckpointError
from orchard_app.models import build_model
from orchard_app.runtime.context import RunContext


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
        tta_vflip=bool(cfg.dataset.augment.vflip),
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
    model = build_run_model(cfg, info)
    hw = cfg.hardware
    memory_format = torch.channels_last if hw.channels_last else torch.preserve_format
    model = model.to(ctx.device, memory_format=memory_format)
    settings = engine_settings(cfg, ctx.device)
    steps = steps_per_epoch(len(data.train), settings.batch_size)
    step_model = model  # what trains: DDP's wrapper in a multi-process run
    if ctx.distributed:
        from orchard_app.distributed import check_batches, wrap_model

        sync = bool(hw.sync_batchnorm)
        check_batches(len(data.train), settings.batch_size, ctx.world_size, sync)
        model, step_model = wrap_model(model, ctx.group, sync)
        torch.manual_seed(seed + ctx.rank)  # each process draws its own dropout masks
    pipeline = BatchPipeline(data, cfg.dataset, ctx.device, bool(hw.channels_last))
    optimizer = build_optimizer(model, cfg.optimizer)
    schedule = build_schedule(optimizer, cfg.scheduler, float(cfg.optimizer.lr), settings.epochs,
                              steps, settings.mode)  # fmt: skip
    checkpoints = Checkpointer(
        ctx.run_dir / "checkpoints", fingerprint(cfg.model, info, model),
        resolved_container(cfg) if config is None else config, enabled=ctx.is_main,
    )  # fmt: skip
    engine = Engine(
        model, pipeline, optimizer, schedule, settings, checkpoints, ctx.device,
        step_model=torch.compile(step_model) if hw.compile else step_model,
        callbacks=callbacks, step_hooks=step_hooks, stop=ctx.stop, group=ctx.group,
    )  # fmt: skip
    return RunParts(data, model, pipeline, engine)


def build_run_model(cfg, info, exportable: bool = False, pretrained: bool | None = None):
    """The run's model for this dataset; `pretrained=False` never reads pretrained weights
    (a model whose weights come from a checkpoint), whatever model.pretrained says."""
    model_cfg = cfg.model
    if pretrained is False and (model_cfg.pretrained or model_cfg.get("weights")):
        from omegaconf import OmegaConf

        model_cfg = OmegaConf.merge(model_cfg, {"pretrained": False, "weights": None})
    return build_model(model_cfg, info.in_chans, info.num_classes, resolution=info.resolution,
                       exportable=exportable)  # fmt: skip


@dataclass
class ExportParts:
    data: DataBundle
    preprocess: Preprocess  # the very module the training pipeline converts batches with
    model: torch.nn.Module  # the checkpoint's weights, eval mode, on the CPU
    checkpoint: Path
    epoch: int | None  # the epoch the weights are from
    config: dict[str, Any]  # the resolved config recorded in the checkpoint


def assemble_export(
    cfg, checkpoint: Path, data: DataBundle | None = None, ckpt: dict[str, Any] | None = None
) -> ExportParts:
    """Data (reused when given), preprocessing and the model of `checkpoint`, rebuilt for export:
    exportable layers, no pretrained weights (the checkpoint has them), weights loaded on the
    CPU after the checkpoint's fingerprint was checked against this config."""
    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    data = load_dataset(cfg.dataset, seed=int(cfg.training.seed)) if data is None else data
    model = build_run_model(cfg, data.info, exportable=True, pretrained=False)
    check_compatible(ckpt["fingerprint"], fingerprint(cfg.model, data.info, model), checkpoint)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{checkpoint}: its weights do not load into {cfg.model.name} "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})"
        ) from None
    epoch = ckpt.get("epoch", (ckpt.get("state") or {}).get("epoch"))
    return ExportParts(data, Preprocess.for_data(cfg.dataset, data.info), model.eval(),
                       checkpoint, epoch, ckpt.get("config") or {})  # fmt: skip
