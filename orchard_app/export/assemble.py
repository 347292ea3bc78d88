"""What a deployment export needs, from a run's config and checkpoint: the data, the very
preprocessing module the training pipeline uses, and the model rebuilt from the checkpoint
(exportable layers, never pretrained weights: the checkpoint has them, and it works offline).
Built from the same factories as a run (data, models, engine.checkpoint), so it cannot drift."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from orchard_app.data.dataset import DataBundle, load_dataset
from orchard_app.data.preprocess import Preprocess
from orchard_app.engine.checkpoint import check_compatible, fingerprint, load_checkpoint
from orchard_app.errors import CheckpointError, cause
from orchard_app.models import build_for_data


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
    model = model_from_checkpoint(cfg, data.info, ckpt, checkpoint, exportable=True)
    epoch = ckpt.get("epoch", (ckpt.get("state") or {}).get("epoch"))
    return ExportParts(data, Preprocess.for_data(cfg.dataset, data.info), model.eval(),
                       checkpoint, epoch, ckpt.get("config") or {})  # fmt: skip


def model_from_checkpoint(cfg, info, ckpt: dict[str, Any], checkpoint: Path,
                          exportable: bool = False) -> torch.nn.Module:  # fmt: skip
    """The run's model for `info` with the checkpoint's weights (no pretrained download), once
    its fingerprint was checked against this config; export and predict both rebuild it here."""
    model = build_for_data(cfg.model, info, exportable=exportable, pretrained=False)
    check_compatible(ckpt["fingerprint"], fingerprint(cfg.model, info, model), checkpoint)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{checkpoint}: its weights do not load into {cfg.model.name} ({cause(e, most=200)})"
        ) from None
    return model
