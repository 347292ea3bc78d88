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
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from pathlib import Path

from filelock import FileLock
from mlflow import MlflowClient

from orchard_app.rundir.layout import MLFLOW_PARENT_LOCK, MULTIRUN_YAML, sweep_dir_of_job

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
        found = client.search_runs(
            [experiment_id],
            f"tags.`{SWEEP_ID_TAG}` = '{key}' and tags.`{ROLE_TAG}` = 'sweep'",
            max_results=1,
        )
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
        name = f"sweep {sweep_dir.parent.name}/{sweep_dir.name}"
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
