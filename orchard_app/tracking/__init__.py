"""Experiment tracking (MLflow). The run directory, its lock, provenance and logging are orchard_app.rundir's.

`open_tracker(cfg, ...)` returns the tracker for `cfg.tracking.name`; `tracking=none` returns a
NullTracker and imports nothing from MLflow. A tracker is a context manager with two hooks:
`on_epoch_end(record, engine)` (an Engine callback) and `log_results(summary, run_dir)`; leaving
the context ends the tracked run with the outcome (completed / failed / interrupted). Its `info`
dict (e.g. the MLflow run id) is recorded in provenance.json by `RunDirectory.track`.

`update_sweep_page(config, sweep_dir, ...)`, called by the sweep's launcher process as trials
or jobs end, keeps a tracked sweep's parent run current as the study's page.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from orchard_app.errors import TrackingError

log = logging.getLogger("orchard_app.tracking")


class NullTracker:
    info: dict[str, Any] = {}

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def on_epoch_end(self, record: dict[str, Any], engine: Any) -> None:
        return None

    def log_results(self, summary: dict[str, Any], run_dir: Path) -> None:
        return None


def open_tracker(
    cfg, run_dir: Path, config: dict[str, Any], config_hash: str, provenance: dict | None = None
):
    """The tracker for `cfg.tracking.name`; `provenance` (git commit, host, run id) becomes tags."""
    if cfg.tracking.name == "none":
        return NullTracker()
    if cfg.tracking.name == "mlflow":
        # MLflow would give its logger a console handler of its own; ours route it (logging.py)
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
        from orchard_app.tracking.mlflow_tracker import MlflowTracker  # imports mlflow (~2 s)

        return MlflowTracker(cfg, Path(run_dir), config, config_hash, provenance or {})
    raise TrackingError(f"tracking={cfg.tracking.name}: unknown tracker; use none or mlflow")


def update_sweep_page(config, sweep_dir: Path, *, study=None, jobs=None, summary: str = "") -> None:
    """Bring a tracked sweep's MLflow parent run up to date: an Optuna `study`, or a grid's
    `jobs` (jobs.jsonl's rows) and its `summary` table. Nothing (MLflow not even imported)
    unless tracking=mlflow; an MLflow error is a warning: the sweep dir holds the same."""
    tracking = config.get("tracking") or {}
    if tracking.get("name") != "mlflow":
        return
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    from mlflow.exceptions import MlflowException

    from orchard_app.tracking import mlflow_sweep, sweep_page
    from orchard_app.tracking.mlflow_store import connect

    sweep_dir = Path(sweep_dir)
    try:
        if study is not None:
            page = sweep_page.study_page(config, study)
        else:
            page = sweep_page.grid_page(config, jobs or [], summary)
        client, experiment_id, _ = connect(tracking, base=Path(str(config.hydra.runtime.cwd)))
        mlflow_sweep.publish(client, experiment_id, sweep_dir, page)
    except (MlflowException, TrackingError, OSError) as e:
        log.warning("mlflow: could not update the sweep's parent run: %s (%s has the same)",
                    e, sweep_dir)  # fmt: skip
