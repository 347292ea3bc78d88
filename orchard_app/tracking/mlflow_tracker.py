"""`tracking=mlflow`: one MLflow run per orchard run (a child of the sweep's run in a --multirun).

Logged: params (the flattened resolved config), tags (dataset, model, git commit, config hash,
run dir, run id), per-epoch metrics (step = epoch), final test metrics (MLflow names: names.py)
and the run's files as artifacts. The run ends FINISHED / FAILED / KILLED by the run's outcome
(outcomes.py; a pruned run is FINISHED), tagged `orchard.outcome` with the exact one, and a run
that did not complete says how in its name (`pruned at epoch 2 · ...`). Imported only when
tracking=mlflow (mlflow takes seconds to import).

Once the run exists, an MLflow error while logging is a warning, not the end of the training:
the run directory holds everything (metrics.json, report.md) either way.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH  # 6000 chars in MLflow 3 (500 before)

from orchard_app.outcomes import MLFLOW_STATUS, Outcome, outcome_of
from orchard_app.rundir import layout
from orchard_app.tracking.links import ui_hint
from orchard_app.tracking.mlflow_store import connect
from orchard_app.tracking.mlflow_sweep import PARENT_TAG, join_sweep, leave_sweep, sweep_of_this_job
from orchard_app.tracking.names import best_metric, epoch_metric, run_metric, safe, test_metric

log = logging.getLogger("orchard_app.tracking")

# Files of a run dir logged as artifacts (missing ones are skipped). Add new outputs here.
EXPORT_ARTIFACTS = tuple(f"{layout.EXPORTS_DIR}/{name}"
                         for name in (layout.ONNX_FP32, layout.ONNX_INT8, layout.EXPORT_BENCHMARK))  # fmt: skip
RESULT_ARTIFACTS = (layout.REPORT, layout.REPORT_HTML, layout.METRICS, layout.FIGURES_DIR,
                    layout.PREDICTIONS, *EXPORT_ARTIFACTS)  # fmt: skip
# Logged when the run ends, whatever the outcome, so failed runs keep their record too.
RECORD_ARTIFACTS = (layout.PROVENANCE, layout.REQUIREMENTS, layout.LOGS_DIR, layout.HYDRA_DIR)
OUTCOME_TAG = "orchard.outcome"  # completed / failed / interrupted / pruned / requeued
EPOCH_METRICS_SKIP = ("epoch",)


class MlflowTracker:
    def __init__(self, cfg, run_dir: Path, config: dict, config_hash: str, provenance: dict):
        self.cfg, self.run_dir, self.config = cfg, run_dir, config
        self.config_hash, self.provenance = config_hash, provenance
        self.info: dict[str, Any] = {}
        self.run_id: str | None = None
        self.parent_id: str | None = None
        self.sweep = sweep_of_this_job()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> MlflowTracker:
        self.client, self.experiment_id, uri = connect(self.cfg.tracking)
        if self.sweep is not None:
            self.parent_id = join_sweep(self.client, self.experiment_id, self.sweep[0])
        run = self.client.create_run(
            self.experiment_id, run_name=self.run_dir.name, tags=self._tags()
        )
        self.run_id = run.info.run_id
        try:
            self.client.log_batch(self.run_id, params=params(self.config))
        except BaseException as e:  # end the run just created, then fail
            self.__exit__(type(e), e, e.__traceback__)
            raise
        self.info = {
            "mlflow_run_id": self.run_id,
            "mlflow_experiment_id": self.experiment_id,
            "mlflow_tracking_uri": uri,
            "mlflow_artifact_uri": run.info.artifact_uri,
            **({"mlflow_parent_run_id": self.parent_id} if self.parent_id else {}),
        }
        log.info(
            "mlflow: run %s in experiment '%s' at %s",
            self.run_id,
            self.cfg.tracking.experiment,
            uri,
        )
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id is None:
            return
        outcome = outcome_of(exc)
        try:
            with self._tolerant("the run record (provenance, logs)"):
                self.client.set_tag(self.run_id, OUTCOME_TAG, str(outcome))
                if outcome != Outcome.COMPLETED:  # seen in the runs table without a column
                    name = run_name(self.run_dir.name, outcome, getattr(exc, "epoch", None))
                    self.client.set_tag(self.run_id, "mlflow.runName", name)
                if getattr(exc, "epoch", None) is not None:
                    self.client.set_tag(self.run_id, "orchard.stopped_at_epoch", str(exc.epoch))
                log_files(self.client, self.run_id, self.run_dir, RECORD_ARTIFACTS)
        finally:
            self.client.set_terminated(self.run_id, MLFLOW_STATUS[outcome])
            if self.parent_id is not None:
                leave_sweep(self.client, self.experiment_id, self.parent_id, self.sweep[0])

    # ------------------------------------------------------------------ hooks
    def on_epoch_end(self, record: dict[str, Any], engine: Any) -> None:
        step, stamp = int(record["epoch"]), _millis()
        metrics = [
            Metric(epoch_metric(key), float(value), stamp, step)
            for key, value in record.items()
            if key not in EPOCH_METRICS_SKIP and _is_number(value)
        ]
        with self._tolerant(f"epoch {step} metrics"):
            self.client.log_batch(self.run_id, metrics=metrics)

    def log_results(self, summary: dict[str, Any], run_dir: Path) -> None:
        metrics = [Metric(k, v, _millis(), 0) for k, v in final_metrics(summary).items()]
        with self._tolerant("the final metrics"):
            self.client.log_batch(self.run_id, metrics=metrics)
        with self._tolerant("the result files"):
            log_files(self.client, self.run_id, self.run_dir, RESULT_ARTIFACTS)
        if self.sweep is None:  # a sweep says it once, under its summary (sweep/progress.py)
            log.info("mlflow: %s", ui_hint(self.info["mlflow_tracking_uri"], self.experiment_id,
                                           self.run_id))  # fmt: skip

    # ------------------------------------------------------------------ pieces
    def _tags(self) -> dict[str, str]:
        p = self.provenance
        tags = {
            "dataset": str(self.cfg.dataset.name),
            "model": str(self.cfg.model.name),
            "config_hash": self.config_hash,
            "run_dir": str(self.run_dir.resolve()),
            "orchard_run_id": str(p.get("run_id", "")),
            "host": str(p.get("host", "")),
            "mlflow.user": _user(),
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": str(p.get("command", ""))[:5000],
        }
        if "git_commit" in p:
            tags |= {"git_commit": p["git_commit"], "git_dirty": str(p["git_dirty"]).lower(),
                     "mlflow.source.git.commit": p["git_commit"]}  # fmt: skip
        if self.sweep is not None:
            tags |= {PARENT_TAG: self.parent_id, "sweep_dir": str(self.sweep[0]),
                     "job_num": self.sweep[1]}  # fmt: skip
        return {k: v for k, v in tags.items() if v}

    @contextlib.contextmanager
    def _tolerant(self, what: str):
        try:
            yield
        except (MlflowException, OSError) as e:
            log.warning("mlflow: could not log %s: %s (the run directory has it)", what, e)


def log_files(client, run_id: str, run_dir: Path, names) -> None:
    """Log these files or folders of `run_dir` (relative paths) to a run, keeping their layout."""
    for name in names:
        path = run_dir / name
        parent = str(Path(name).parent) if Path(name).parent != Path(".") else None
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=name)
        elif path.is_file():
            client.log_artifact(run_id, str(path), artifact_path=parent)


def add_to_run(tracking: dict[str, Any], run_dir: Path, names, metrics: dict[str, float]) -> None:
    """Add files and metrics to the MLflow run a run directory recorded (provenance.json's
    `tracking`: its URI and run id), e.g. a later export of it. A failure is a warning."""
    from mlflow import MlflowClient

    run_id, uri = tracking["mlflow_run_id"], tracking["mlflow_tracking_uri"]
    try:
        client = MlflowClient(tracking_uri=uri)
        stamp = _millis()
        client.log_batch(
            run_id, metrics=[Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        )
        log_files(client, run_id, run_dir, names)
        log.info("mlflow: added %s to run %s at %s", ", ".join(names), run_id, uri)
    except (MlflowException, OSError) as e:
        log.warning(
            "mlflow: could not add the export to run %s: %s (the run dir has it)", run_id, e
        )


def params(config: dict[str, Any]) -> list[Param]:
    """The resolved config as MLflow params: `dataset.name`, `optimizer.lr`, ...; values that
    are lists or dicts as JSON, cut to MLflow's length limit (log_batch splits the batches)."""
    return [Param(key, value) for key, value in flatten(config).items()]


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{_safe_key(str(key))}"
        if isinstance(value, dict) and value:
            out |= flatten(value, name + ".")
        else:
            out[name] = _param_value(value)
    return out


def run_name(name: str, outcome: Outcome, epoch: int | None = None) -> str:
    """A run's name once it ended other than completed: `pruned at epoch 2 · 3_npz_mini_cnn_1a2b3c`,
    `failed · ...`; first, so that the runs table's narrow name column still shows it. MLflow's
    status tells only FINISHED, FAILED or KILLED, and a pruned run is FINISHED (a normal end
    of a trial, not an interruption)."""
    at = f" at epoch {epoch}" if epoch is not None and outcome == Outcome.PRUNED else ""
    return f"{outcome}{at} · {name}"


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """By their MLflow names (names.py): test/<metric>, test/per_class/<metric>/<class>, the
    monitor's best value, best epoch, epochs run, training time and the export's numbers."""
    out: dict[str, float] = {}
    for key, value in summary.get("test", {}).items():
        if _is_number(value):
            out[test_metric(key)] = float(value)
    for label, row in (summary.get("test", {}).get("per_class") or {}).items():
        for key, value in row.items():
            if _is_number(value):
                out[test_metric(key, label)] = float(value)
    monitor = summary.get("monitor") or {}
    if _is_number(monitor.get("best_value")):
        out[best_metric(monitor["name"])] = float(monitor["best_value"])
    for key, value in (summary.get("export") or {}).items():  # export/<model>/<metric>
        if _is_number(value):
            out["/".join(safe(part) for part in key.split("/"))] = float(value)
    for key in ("best_epoch", "epochs_run", "train_seconds"):
        if _is_number(summary.get(key)):
            out[run_metric(key)] = float(summary[key])
    return out


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)
    if len(text) > MAX_PARAM_VAL_LENGTH:
        text = text[: MAX_PARAM_VAL_LENGTH - 3] + "..."
    return text


def _safe_key(key: str) -> str:
    """MLflow keys allow letters, digits, `_ - . / ` and space; anything else becomes `_`."""
    key = re.sub(r"[^\w.\- /]", "_", key).strip(" /")
    return re.sub(r"/+", "/", key).replace("..", "_") or "_"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _millis() -> int:
    return int(time.time() * 1000)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""
