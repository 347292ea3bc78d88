"""`train(cfg) -> float`, the one entry point: data -> model -> engine -> evaluation -> artifacts.

Returns the best validation value of `training.monitor`, the number Hydra sweepers optimise.
The test split is evaluated once, with the best checkpoint. metrics.json is written last
(after the figures, the report and the export), so its presence means the run finished. A
trial its pruner stops writes only a report of its validation epochs (no test, no figures).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

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
from orchard_app.errors import RunPruned, TrainingInterrupted
from orchard_app.evaluation.artifacts import write_metrics, write_results
from orchard_app.evaluation.metrics import per_class_report
from orchard_app.evaluation.report import write_report
from orchard_app.evaluation.summary import RunSummary
from orchard_app.run.assemble import assemble
from orchard_app.run.context import RunContext, stop_policy
from orchard_app.rundir import layout
from orchard_app.rundir.directory import RunDirectory
from orchard_app.rundir.provenance import BEST_DIGEST, device_info, file_digest, read_provenance
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
    left_out = _safe_flips(cfg)  # before the config is recorded: the run records what it used
    run_path = Path(output_dir) if output_dir is not None else _hydra_output_dir()
    config = resolved_container(cfg)  # resolved once: recorded, hashed, logged
    digest = hash_container(config)
    fields = {"config_hash": digest, "config_hash_short": digest[:SHORT_HASH_LEN]}
    resume, continues = resume_target(cfg.training.resume, run_path)
    if continues and (best := _completed_value(run_path, digest)) is not None:
        log.info("%s: this run already completed; nothing to resume (its record is kept)", run_path)
        return best
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
        if left_out:
            log.info("augment: dataset.augment.safe_only left out %s", "; ".join(left_out))
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
        try:
            state = engine.fit()
        except RunPruned as e:  # a pruned trial needs no test, figures or export: a short report
            if ctx.is_main:
                summary = RunSummary.of(cfg, engine, data, None, parts.n_params,
                                        time.perf_counter() - started)  # fmt: skip
                write_report(run_path / layout.REPORT, summary, config, [], pruned_at=e.epoch)
            raise
        train_seconds = time.perf_counter() - started

        progress.phase = "the test evaluation"
        engine.load_best()  # the test split is used once, with the best checkpoint
        test, probs, labels = engine.evaluate(data.test, tta=bool(cfg.evaluation.tta))
        test["per_class"] = per_class_report(info.task, labels, probs, list(info.label_names))
        summary = RunSummary.of(cfg, engine, data, test, parts.n_params, train_seconds)
        if ctx.is_main:
            progress.phase = "writing the results"
            explained = torch.nn.Sequential(parts.pipeline.preprocess, parts.model)  # raw pixels in
            write_results(run_path, summary, config, data, labels, probs, cfg.evaluation, explained)
            exported = {}
            try:
                if cfg.export.enabled:  # the best checkpoint, as a deployment would get it
                    progress.phase = "the deployment export"
                    exported["export"] = _export(cfg, run_path, data)
            finally:  # a failed export still leaves the training's results, written and tracked
                run.provenance.update(
                    **{BEST_DIGEST: file_digest(layout.best_checkpoint(run_path))}
                )
                write_metrics(run_path / layout.METRICS, summary)
                tracker.log_results(summary.to_dict() | exported, run_path)

        log.info(
            "test (best epoch %s, %s %.4f): accuracy %.4f  AUC %.4f  macro-F1 %.4f  "
            "balanced accuracy %.4f", state.best_epoch, engine.monitor, state.best_value,
            test["accuracy"], test["auc"], test["macro_f1"], test["balanced_accuracy"],
        )  # fmt: skip
        files = [
            layout.REPORT,
            layout.METRICS,
            f"{layout.CHECKPOINTS_DIR}/{layout.BEST_CHECKPOINT}",
        ]
        log.info(
            "done: %s  (%s)",
            run_path,
            ", ".join(files + [f"{layout.EXPORTS_DIR}/"] * cfg.export.enabled),
        )
        return float(state.best_value)


def _completed_value(run_path: Path, digest: str) -> float | None:
    """The recorded best value when `run_path` holds this very config's completed run."""
    prov = read_provenance(run_path / layout.PROVENANCE) or {}
    if prov.get("status") != "completed" or prov.get("config_hash") != digest:
        return None
    try:
        return float(json.loads((run_path / layout.METRICS).read_text())["monitor"]["best_value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _safe_flips(cfg: DictConfig) -> list[str]:
    """Apply the flips `dataset.augment.safe_only` keeps for this set; what it left out."""
    from omegaconf import OmegaConf

    from orchard_app.config.laterality import plan_flips

    use, left_out, _ = plan_flips(cfg)
    for key, value in use.items():
        OmegaConf.update(cfg, key, value)
    return left_out


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
        last = layout.last_checkpoint(run_dir)
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


def _export(cfg, run_path: Path, data) -> dict:
    from orchard_app.export.pipeline import export_run, summary_metrics

    out, report = run_path / layout.EXPORTS_DIR, run_path / layout.REPORT
    bench = export_run(cfg, layout.best_checkpoint(run_path), out, data=data, report=report)
    return summary_metrics(bench)


def _hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        raise RuntimeError("train(cfg) outside a Hydra app needs output_dir=<run directory>")
    return Path(HydraConfig.get().runtime.output_dir)
