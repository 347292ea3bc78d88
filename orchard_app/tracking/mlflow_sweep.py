"""A `--multirun` sweep as one MLflow parent run with a child run per job.

The jobs organise this themselves, through the tracking store and the sweep directory they
share, so it works the same for jobs run in this process (basic launcher), in other processes
or on other nodes (submitit, SLURM arrays), and for sweeps of unknown length (Optuna):

- a job starting looks up the parent by the tag `orchard.sweep_id` (a hash of the absolute
  sweep dir), creates it if it is missing, and marks it RUNNING;
- a job ending ends the parent when no sibling is still running: FAILED if a child failed,
  else KILLED if one was interrupted, else FINISHED.

Both steps hold a file lock in the sweep directory, so two jobs never create two parents.
Nothing depends on the launcher's process or on a Hydra callback. A job killed with kill -9
stays RUNNING in MLflow and so keeps its parent RUNNING; the next job of the sweep that ends
cannot tell it from a live one.

The launcher's process keeps the parent's page current (`publish`, through
tracking.update_sweep_page): its name, the study's params, progress metrics and files
(sweep_page.py). It never changes the parent's status: that is the jobs' to say.
"""

from __future__ import annotations

import hashlib
import logging
import shlex
import time
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

from orchard_app.rundir.layout import MLFLOW_PARENT_LOCK, MULTIRUN_YAML, sweep_dir_of_job
from orchard_app.tracking.sweep_page import Page, page_name

log = logging.getLogger("orchard_app.tracking")

SWEEP_ID_TAG = "orchard.sweep_id"
ROLE_TAG = "orchard.role"
PARENT_TAG = "mlflow.parentRunId"


def sweep_of_this_job() -> tuple[Path, str] | None:
    """(absolute sweep dir, job number) when running as a Hydra multirun job, else None."""
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = sweep_dir_of_job()
    return None if sweep_dir is None else (sweep_dir, str(HydraConfig.get().job.num))


def sweep_id(sweep_dir: Path) -> str:
    return hashlib.blake2b(str(sweep_dir).encode(), digest_size=8).hexdigest()


def join_sweep(client: MlflowClient, experiment_id: str, sweep_dir: Path) -> str:
    """The id of the sweep's parent run, created on first use; marked RUNNING."""
    key = sweep_id(sweep_dir)
    with _lock(sweep_dir):
        found = _find(client, experiment_id, sweep_dir)
        if found:
            parent = found[0].info
            if parent.status != "RUNNING":
                client.update_run(parent.run_id, status="RUNNING")
            return parent.run_id
        tags = {
            SWEEP_ID_TAG: key,
            ROLE_TAG: "sweep",
            "sweep_dir": str(sweep_dir),
            **_sweep_overrides(sweep_dir),
        }
        name = _first_name(sweep_dir)
        parent_id = client.create_run(experiment_id, run_name=name, tags=tags).info.run_id
        if (sweep_dir / MULTIRUN_YAML).is_file():
            client.log_artifact(parent_id, str(sweep_dir / MULTIRUN_YAML))
        log.info("mlflow: sweep parent run %s (%s)", parent_id, name)
        return parent_id


def leave_sweep(client: MlflowClient, experiment_id: str, parent_id: str, sweep_dir: Path) -> None:
    """Called after a child run ended: end the parent if no child is still running."""
    with _lock(sweep_dir):

        def any_child(status: str) -> bool:
            query = f"tags.`{PARENT_TAG}` = '{parent_id}' and attributes.status = '{status}'"
            return bool(client.search_runs([experiment_id], query, max_results=1))

        if any_child("RUNNING"):
            return
        status = next((s for s in ("FAILED", "KILLED") if any_child(s)), "FINISHED")
        client.set_terminated(parent_id, status)


def publish(client: MlflowClient, experiment_id: str, sweep_dir: Path, page: Page) -> bool:
    """Bring the sweep's parent run up to `page`: only what is new is sent (a param keeps its
    first value, as MLflow requires: a later one, e.g. a raised n_trials, is the tag
    `now.<param>`). False when no job has made the parent yet."""
    found = _find(client, experiment_id, sweep_dir)
    if not found:
        return False
    run = found[0]
    run_id, params, tags = run.info.run_id, run.data.params, run.data.tags
    new_tags = (
        [RunTag("mlflow.runName", page.name)] if tags.get("mlflow.runName") != page.name else []
    )
    new_params = []
    for key, value in page.params.items():
        value = value[:MAX_PARAM_VAL_LENGTH]
        if key not in params:
            new_params.append(Param(key, value))
        elif params[key] != value and tags.get(f"now.{key}") != value:
            new_tags.append(RunTag(f"now.{key}", value))
    stamp, metrics = int(time.time() * 1000), []
    for name, points in page.series.items():
        logged = (
            {m.step for m in client.get_metric_history(run_id, name)}
            if name in run.data.metrics
            else set()
        )
        metrics += [
            Metric(name, v, stamp, step) for step, v in points.items() if step not in logged
        ]
    ended = sum(page.counts.values())
    metrics += [Metric(k, float(v), stamp, ended) for k, v in page.counts.items()
                if run.data.metrics.get(k) != v]  # fmt: skip
    client.log_batch(run_id, metrics=metrics, params=new_params, tags=new_tags)
    for name in page.files:
        path = sweep_dir / name
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=name)
        elif path.is_file():
            client.log_artifact(run_id, str(path))
    for name, text in page.texts.items():
        client.log_text(run_id, text, name)
    return True


def _find(client: MlflowClient, experiment_id: str, sweep_dir: Path) -> list:
    return client.search_runs(
        [experiment_id],
        f"tags.`{SWEEP_ID_TAG}` = '{sweep_id(sweep_dir)}' and tags.`{ROLE_TAG}` = 'sweep'",
        max_results=1,
    )


def _first_name(sweep_dir: Path) -> str:
    """The parent's name until the launcher's process gives it the page's (the same, once
    the study has a name of its own): from the sweep's multirun.yaml."""
    from omegaconf import OmegaConf

    try:
        return page_name(OmegaConf.load(sweep_dir / MULTIRUN_YAML))
    except Exception:  # absent or unreadable: the name is a convenience, the file is the record
        return f"sweep {sweep_dir.parent.name}/{sweep_dir.name}"


def _lock(sweep_dir: Path) -> FileLock:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(str(sweep_dir / MLFLOW_PARENT_LOCK), timeout=120)


def _sweep_overrides(sweep_dir: Path) -> dict[str, str]:
    """The sweep's own overrides (e.g. `training.seed=1,2`), from Hydra's multirun.yaml."""
    from omegaconf import OmegaConf

    try:
        overrides = OmegaConf.load(sweep_dir / MULTIRUN_YAML).hydra.overrides.task
    except Exception:  # absent or unreadable: the tag is a convenience, the file is the record
        return {}
    return {"sweep_overrides": shlex.join(str(o) for o in overrides)}
