"""The trained model predict runs: a run's exports/model.onnx (preprocessing inside) when it has
one, else its checkpoints/best.pt rebuilt as the export does, behind the same preprocessing
module; a model.onnx file alone works too. Class names, task and input size come from the run
(metrics.json, the saved config, the checkpoint's fingerprint) or from the ONNX metadata."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from orchard_app.errors import CheckpointError, ConfigError
from orchard_app.rundir import layout

log = logging.getLogger("orchard_app.predict")


@dataclass
class Predictor:
    predict: Callable[[np.ndarray], np.ndarray]  # uint8 N x C x H x W -> probabilities
    names: list[str]
    task: str
    channels: int  # as the model's input takes them (before any expansion inside)
    side: int
    resize: str  # the run's dataset.resize: how images are brought to `side`
    hflip: bool  # --tta averages horizontal flips (never on a set whose classes name a side)
    vflip: bool  # the run trained with vertical flips: --tta averages them too
    source: str  # what runs, for the summary
    explainable: Any = None  # raw pixels -> logits (torch), for Grad-CAM; checkpoint only

    @property
    def multilabel(self) -> bool:
        return self.task == "multi-label"

    def __call__(self, batch: np.ndarray, tta: bool = False) -> np.ndarray:
        """Probabilities; with `tta` averaged over the run's flips, as the engine's evaluation."""
        if not tta:
            return self.predict(batch)
        axes = [None] + [3] * self.hflip + [2] * self.vflip
        views = [batch if a is None else np.ascontiguousarray(np.flip(batch, a)) for a in axes]
        return sum(self.predict(v) for v in views) / len(views)


def load(target: Path, device: str = "cpu", explain: bool = False) -> Predictor:
    """The model of `target` (a run directory, a checkpoint or a model.onnx). Grad-CAM needs
    gradients and --device cuda the checkpoint: then the checkpoint is used even when the run
    has a model.onnx."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(["--device cuda: torch sees no CUDA device here; use --device cpu"])
    if target.suffix == ".onnx":
        if not target.is_file():
            raise CheckpointError(f"{target}: no such file; pass a run directory or a model.onnx")
        if explain or device == "cuda":
            need = "--explain needs gradients" if explain else "--device cuda runs torch"
            raise CheckpointError(f"{need}, which a model.onnx alone cannot give; pass the run "
                                  "directory (its checkpoints/best.pt) instead")  # fmt: skip
        return _from_onnx(target, target.parent.parent)
    if not target.exists():
        raise CheckpointError(f"{target}: no such run directory, checkpoint or model.onnx")
    onnx = target / layout.EXPORTS_DIR / layout.ONNX_FP32
    if target.is_dir() and onnx.is_file() and not explain and device == "cpu":
        return _from_onnx(onnx, target)
    if target.is_dir() and not layout.best_checkpoint(target).is_file():
        raise CheckpointError(
            f"{target} has no {layout.CHECKPOINTS_DIR}/{layout.BEST_CHECKPOINT}"
            + ("" if onnx.is_file() else f" nor {layout.EXPORTS_DIR}/{layout.ONNX_FP32}")
            + ": not a run directory, or its run never finished an epoch. Pass a trained run's "
            "directory (outputs/<date>/<run>)"
            + (", or drop --explain/--device cuda to use its model.onnx" if onnx.is_file() else "")
        )
    return _from_checkpoint(target, device)


def _from_onnx(path: Path, run_dir: Path) -> Predictor:
    from orchard_app.export.session import onnx_predictor, open_session

    session = open_session(path, os.cpu_count() or 1)
    meta = session.get_modelmeta().custom_metadata_map
    try:
        channels, side, _ = (int(v) for v in meta["input_size"].split("x"))
        names, task = json.loads(meta["class_names"]), meta["task"]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path} lacks orchard_app's metadata ({e}); pass the run "
                              "directory that exported it") from None  # fmt: skip
    cfg = _run_config(run_dir)
    return Predictor(onnx_predictor(session), names, task, channels, side, *_run_settings(cfg, names),
                     source=str(path))  # fmt: skip


def _from_checkpoint(target: Path, device: str) -> Predictor:
    from torch import nn

    from orchard_app.data.preprocess import Preprocess
    from orchard_app.engine.checkpoint import load_checkpoint
    from orchard_app.export.assemble import model_from_checkpoint
    from orchard_app.export.graph import Deployable, torch_predictor
    from orchard_app.export.trained import resolve_target, trained_config

    checkpoint, run_dir = resolve_target(target)
    cfg, ckpt = trained_config(checkpoint, run_dir)
    ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
    fp = ckpt["fingerprint"]
    # force_rgb runs take grey images expanded inside; giving them RGB (grey replicated) is the same
    info = SimpleNamespace(name=fp["dataset"], task=fp["task"], num_classes=fp["num_classes"],
                           in_chans=fp["in_chans"], channels=fp["in_chans"],
                           resolution=fp["resolution"])  # fmt: skip
    net = model_from_checkpoint(cfg, info, ckpt, checkpoint)
    preprocess = Preprocess.for_data(cfg.dataset, info)
    net = net.to(device).eval()
    predict = torch_predictor(Deployable(preprocess, net, info.task == "multi-label"), device)
    names = _names(run_dir, cfg, fp["num_classes"])
    return Predictor(predict, names, fp["task"], fp["in_chans"], fp["resolution"],
                     *_run_settings(cfg, names), source=str(checkpoint),
                     explainable=nn.Sequential(preprocess, net))  # fmt: skip


def _run_config(run_dir: Path):
    """The run's config for an ONNX next to its run (resize, flips); None for a lone file."""
    best = layout.best_checkpoint(run_dir)
    if not (layout.saved_config(run_dir).is_file() or best.is_file()):
        return None
    from orchard_app.export.trained import trained_config

    return trained_config(best, run_dir)[0]


def _run_settings(cfg, names: list[str]) -> tuple[str, bool, bool]:
    """(resize, TTA's horizontal flip, its vertical flip), as the run's evaluation had them."""
    from orchard_app.config.laterality import is_lateral, side_classes

    if cfg is None:
        log.info("no run config next to the model: images are padded to square (resize=pad)")
        return "pad", not side_classes(names), False
    return (str(cfg.dataset.get("resize", "pad")), not is_lateral(cfg.dataset, names),
            bool(cfg.dataset.augment.vflip))  # fmt: skip


def _names(run_dir: Path, cfg, n: int) -> list[str]:
    metrics = run_dir / layout.METRICS
    if metrics.is_file():
        names = json.loads(metrics.read_text()).get("dataset", {}).get("label_names")
        if names and len(names) == n:
            return [str(x) for x in names]
    if cfg.dataset.label_names and len(cfg.dataset.label_names) == n:
        return [str(x) for x in cfg.dataset.label_names]
    if cfg.dataset.source == "medmnist":
        from orchard_app.config.medmnist import label_names

        return list(label_names(cfg.dataset.name))
    return [str(i) for i in range(n)]
