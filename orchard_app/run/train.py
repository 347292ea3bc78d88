"""`train(cfg) -> float`, the one entry point: data -> model -> engine -> evaluation -> artifacts.

Returns the best validation value of `training.monitor`, the number Hydra sweepers optimise.
The test split is evaluated once, with the best checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from orchard_app.config.resolvers import (
    SHORT_HASH_LEN,
    experiment_view,
    hash_container,
    resolved_container,
)
from orchard_app.config.validate import validate
from orchard_app.distributed.rank import process_rank
from orchard_app.engine.loop import Engine, EpochCallback, StepHook
from orchard_app.errors import TrainingInterrupted
from orchard_app.evaluation import figures
from orchard_app.evaluation.artifacts import write_metrics, write_predictions
from orchard_app.evaluation.metrics import confusion, per_class_report
from orchard_app.evaluation.report import write_report
from orchard_app.run.assemble import assemble
from orchard_app.run.context import RunContext, stop_policy
from orchard_app.rundir.directory import RunDirectory
from orchard_app.rundir.provenance import device_info
from orchard_app.tracking import NullTracker, open_tracker

log = logging.getLogger("orchard_app")


def train(
    cfg: DictConfig,
    output_dir: str | Path | None = None,
    callbacks: Sequence[EpochCallback] = (),
    step_hooks: Sequence[StepHook] = (),
) -> float:
    """Train, test and record one run; `callbacks` run after each epoch (after tracking),
    `step_hooks` after each training step."""
    validate(cfg)
    run_path = Path(output_dir) if output_dir is not None else _hydra_output_dir()
    config = resolved_container(cfg)  # resolved once: recorded, hashed, logged
    digest = hash_container(config)
    fields = {"config_hash": digest, "config_hash_short": digest[:SHORT_HASH_LEN]}
    resume, continues = resume_target(cfg.training.resume, run_path)
    process = process_rank()
    if process.world_size > 1:
        fields |= {"world_size": process.world_size, "launcher": process.launcher}
    progress = Progress()
    with (
        stop_policy() as stop,
        RunContext.create(cfg, run_path, stop) as ctx,  # (left after the run dir's records)
        RunDirectory(run_path, fields, resumed_from=str(resume) if resume else None,
                     continues=continues, main=process.is_main, job_config=cfg) as run,
        progress.explain_interruptions(),
    ):  # fmt: skip
        tracker = NullTracker()
        if ctx.is_main:  # closed by the run dir after provenance.json records the outcome
            tracker = run.track(open_tracker(cfg, run_path, config, digest, run.provenance.data))
            run.provenance.update(**device_info(ctx.device))
            if ctx.distributed:
                run.provenance.update(backend=ctx.group.backend)
        log.info("run dir %s", run_path)
        _log_processes(ctx, cfg)

        progress.phase = "loading the data and building the model"
        parts = assemble(cfg, ctx, config, [tracker.on_epoch_end, *callbacks], step_hooks)
        engine, data, info = parts.engine, parts.data, parts.data.info
        progress.engine = engine
        log.info(
            "dataset %s: %s, %d %s, %dx%dx%d, train/val/test %d/%d/%d", info.name, info.task,
            info.num_classes, "labels" if info.multilabel else "classes", info.in_chans,
            info.resolution, info.resolution, len(data.train), len(data.val), len(data.test),
        )  # fmt: skip
        log.info("model %s: %s parameters on %s", cfg.model.name, f"{parts.n_params:,}", ctx.device)
        if resume is not None:
            engine.resume(resume)
            if changed := changed_keys(
                experiment_view(engine.resumed_config), experiment_view(config)
            ):
                log.warning("config differs from the checkpoint's in: %s", ", ".join(changed))

        progress.phase = "training"
        started = time.perf_counter()
        state = engine.fit()
        train_seconds = time.perf_counter() - started

        progress.phase = "the test evaluation"
        engine.load_best()  # the test split is used once, with the best checkpoint
        test, probs, labels = engine.evaluate(data.test, tta=bool(cfg.evaluation.tta))
        test["per_class"] = per_class_report(info.task, labels, probs, list(info.label_names))
        summary = _summary(cfg, engine, data, test, parts.n_params, train_seconds, ctx.device)
        if ctx.is_main:
            progress.phase = "writing the results"
            _write_artifacts(cfg, run_path, summary, config, data, labels, probs, parts)
            try:
                if cfg.export.enabled:  # the best checkpoint, as a deployment would get it
                    progress.phase = "the deployment export"
                    summary["export"] = _export(cfg, run_path, data)
            finally:  # a failed export still leaves the training's results tracked
                tracker.log_results(summary, run_path)

        log.info(
            "test (best epoch %s, %s %.4f): accuracy %.4f  AUC %.4f  macro-F1 %.4f  "
            "balanced accuracy %.4f", state.best_epoch, engine.monitor, state.best_value,
            test["accuracy"], test["auc"], test["macro_f1"], test["balanced_accuracy"],
        )  # fmt: skip
        files = ["report.md", "metrics.json", "checkpoints/best.pt"]
        log.info("done: %s  (%s)", run_path, ", ".join(files + ["exports/"] * cfg.export.enabled))
        return float(state.best_value)


def _log_processes(ctx: RunContext, cfg: DictConfig) -> None:
    if ctx.distributed:
        log.info(
            "DistributedDataParallel: %d processes (%s, %s), %s BatchNorm; training.batch_size "
            "%d is the global batch", ctx.world_size, ctx.process.launcher, ctx.group.backend,
            "synchronised" if cfg.hardware.sync_batchnorm else "per-process",
            cfg.training.batch_size,
        )  # fmt: skip
    elif ctx.world_size > 1:
        log.warning(
            "%d processes were started (%s) but hardware.distributed=false: each trains the "
            "whole run on its own and only rank 0 writes; use hardware=ddp to share the work",
            ctx.world_size, ctx.process.launcher,
        )  # fmt: skip


def resume_target(resume: str | None, run_dir: Path) -> tuple[Path | None, bool]:
    """(checkpoint to resume from, whether this continues the run in `run_dir`).

    `auto` resumes from <run dir>/checkpoints/last.pt when it exists and starts fresh otherwise
    (what a requeued cluster job needs); either way it continues that directory's record.
    """
    if resume is None:
        return None, False
    if str(resume) == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return (last if last.is_file() else None), True
    path = Path(os.path.expanduser(str(resume)))
    return path, path.resolve().is_relative_to(Path(run_dir).resolve())


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """`key (old -> new)` for every leaf that differs between two resolved configs."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, name + ".")
        elif a != b:
            out.append(f"{name} ({a} -> {b})")
    return out


class Progress:
    """Where the run is, so that a stop outside the training loop (a second Ctrl-C, SIGTERM
    during the test evaluation) says what was saved and how to resume."""

    def __init__(self) -> None:
        self.phase = "start-up"
        self.engine: Engine | None = None

    @contextlib.contextmanager
    def explain_interruptions(self):
        try:
            yield
        except TrainingInterrupted as e:
            if e.checkpoint is None:
                self._explain(e)
            raise

    def _explain(self, e: TrainingInterrupted) -> None:
        last = self.engine.checkpoints.last if self.engine is not None else None
        if last is not None and last.is_file():
            e.checkpoint = str(last.resolve())
            epoch = self.engine.state.epoch
            e.args = (f"{e} during {self.phase}; {e.checkpoint} holds the run up to epoch {epoch}",)
        else:
            e.args = (f"{e} during {self.phase}, before training saved a checkpoint",)


def _summary(cfg, engine: Engine, data, test: dict, n_params: int, seconds: float, device) -> dict:
    """Everything metrics.json records about the run."""
    info, state = data.info, engine.state
    return {
        "test": test,
        "best_epoch": state.best_epoch,
        "monitor": {"name": engine.monitor, "mode": engine.mode, "best_value": state.best_value},
        "epochs_run": state.epoch,
        "stopped_early": state.stopped_early,
        "resumed_from": engine.resumed_from,
        "train_seconds": round(seconds, 2),
        "device": str(device),
        "dataset": {
            "name": info.name, "task": info.task, "num_classes": info.num_classes,
            "in_chans": info.in_chans, "resolution": info.resolution,
            "label_names": list(info.label_names), "counts": info.counts,
            "train_samples": len(data.train), "file": info.file, "md5": info.md5,
            "licence": info.licence,
        },
        "model": {
            "name": str(cfg.model.name), "arch": str(cfg.model.arch), "parameters": n_params,
            "pretrained": bool(cfg.model.pretrained),
        },
        "history": state.history,
    }  # fmt: skip


def _export(cfg, run_path: Path, data) -> dict:
    from orchard_app.export.pipeline import EXPORT_DIR, export_run, summary_metrics

    best = run_path / "checkpoints" / "best.pt"
    bench = export_run(cfg, best, run_path / EXPORT_DIR, data=data, report=run_path / "report.md")
    return summary_metrics(bench)


def _write_artifacts(
    cfg, run_path: Path, summary: dict, config: dict, data, labels, probs, parts
) -> None:
    names = list(data.info.label_names)
    write_metrics(run_path / "metrics.json", summary)
    write_predictions(run_path / "predictions_test.csv", data.info.task, labels, probs, names)
    figs = (
        _figures(cfg, run_path, summary, data, labels, probs, parts)
        if cfg.evaluation.figures
        else []
    )
    write_report(run_path / "report.md", summary, config, figs)


def _figures(
    cfg, run_path: Path, summary: dict, data, labels: np.ndarray, probs: np.ndarray, parts
) -> list[str]:
    info = data.info
    names = list(info.label_names)
    out = run_path / "figures"
    out.mkdir(exist_ok=True)
    made = []
    figures.training_curves(
        out / "training_curves.png",
        summary["history"],
        summary["monitor"]["name"],
        summary["best_epoch"],
    )
    made.append("figures/training_curves.png")
    if info.multilabel:
        from sklearn.metrics import roc_auc_score

        aucs = {
            n: float(roc_auc_score(labels[:, i], probs[:, i]))
            for i, n in enumerate(names)
            if 0 < labels[:, i].sum() < len(labels)
        }
        figures.per_label_auc(out / "auc_per_label.png", aucs)
        made.append("figures/auc_per_label.png")
    else:
        figures.confusion_matrix(
            out / "confusion_matrix.png", confusion(labels, probs, len(names)), names
        )
        made.append("figures/confusion_matrix.png")
    figures.roc_curves(out / "roc_curves.png", info.task, labels, probs, names)
    made.append("figures/roc_curves.png")
    n = min(int(cfg.evaluation.sample_grid), len(labels))
    if n:
        idx = np.random.default_rng(0).choice(len(labels), size=n, replace=False)
        sample = data.test.rows(torch.from_numpy(idx)).cpu().numpy()
        figures.sample_grid(
            out / "test_samples.png", sample, labels[idx], probs[idx], names, info.task
        )
        made.append("figures/test_samples.png")
    if cfg.evaluation.saliency:
        from orchard_app.evaluation.saliency import saliency_figure

        model = torch.nn.Sequential(parts.pipeline.preprocess, parts.model)  # raw pixels in
        saliency_figure(model, data.test.rows, labels, probs, names, out / "saliency.png")
        made.append("figures/saliency.png")
    return made


def _hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise RuntimeError("train(cfg) outside a Hydra app needs output_dir=<run directory>")
    return Path(HydraConfig.get().runtime.output_dir)
