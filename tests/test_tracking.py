"""Tracking and provenance: MLflow runs and sweeps, provenance.json, run-dir names, the
one-writer lock and structured logs (issue 7)."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from importlib import metadata
from pathlib import Path

import pytest
from conftest import ROOT, compose, make_npz, only_run_dir, run_cli, tiny_overrides

from orchard_app import train
from orchard_app.config import config_hash
from orchard_app.errors import DataError, RunLockedError, TrainingInterrupted
from orchard_app.rundir import provenance
from orchard_app.rundir.claim import claim_unique_dir
from orchard_app.rundir.directory import RunDirectory

IN_GIT_CHECKOUT = (ROOT / ".git").exists()


# ---------------------------------------------------------------------- helpers
@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow SQLite DB with its schema made once (the migrations take seconds)."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "template.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture
def db(_empty_mlflow_db, tmp_path) -> Path:
    """A fresh MLflow DB of this test's own, in tmp_path (artifacts go to tmp_path/mlartifacts)."""
    path = tmp_path / "mlflow.db"
    shutil.copyfile(_empty_mlflow_db, path)
    return path


def with_mlflow(db: Path) -> list[str]:
    return ["tracking=mlflow", f"tracking.uri=sqlite:///{db}"]


def mlflow_runs(db: Path) -> list:
    """Every run of the orchard_app experiment in `db`, through mlflow.search_runs."""
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        return mlflow.search_runs(experiment_names=["orchard_app"], output_format="list")


def client(db: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{db}")


def artifact_json(run, name: str) -> dict:
    """An artifact of a run, read from the local artifact store."""
    from orchard_app.tracking.mlflow_store import local_path

    return json.loads((local_path(run.info.artifact_uri) / name).read_text())


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


HOLDER = """
import sys, time
from pathlib import Path
from orchard_app.rundir.lock import RunLock
lock = RunLock(Path(sys.argv[1])).__enter__()  # (kept referenced: filelock unlocks on GC)
print("locked", flush=True)
time.sleep(300)
"""


def hold_lock(directory: Path) -> subprocess.Popen:
    """Another process holding the run-dir lock (light: no torch), until killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "locked"
    return holder


# ---------------------------------------------------------------------- MLflow
def test_mlflow_run_records_config_epochs_results_and_files(tiny_npz, tmp_path, db):
    run_dir = tmp_path / "run"
    cfg = compose(*tiny_overrides(tiny_npz, "training.epochs=2", *with_mlflow(db)))
    train(cfg, output_dir=run_dir)

    (run,) = mlflow_runs(db)
    metrics, prov = read_json(run_dir / "metrics.json"), read_json(run_dir / "provenance.json")
    assert run.info.status == "FINISHED"
    assert prov["tracking"]["mlflow_run_id"] == run.info.run_id
    # params: the flattened resolved config
    params = run.data.params
    assert params["dataset.name"] == "npz" and params["model.name"] == "mini_cnn"
    assert params["training.epochs"] == "2" and float(params["optimizer.lr"]) == cfg.optimizer.lr
    assert params["optimizer.betas"] == "[0.9, 0.999]"
    assert params["dataset.augment.hflip"] == "False" and params["dataset.path"] == str(tiny_npz)
    # per-epoch metrics (step = epoch) and final test metrics, in groups: epoch/, test/, run/
    history = client(db).get_metric_history(run.info.run_id, "epoch/val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [
        (h["epoch"], pytest.approx(h["val_accuracy"])) for h in metrics["history"]
    ]
    final = run.data.metrics
    assert final["epoch/train_loss"] == pytest.approx(metrics["history"][-1]["train_loss"])
    assert final["optimizer/lr"] == pytest.approx(metrics["history"][-1]["lr"])
    for name in ("accuracy", "auc", "macro_f1", "balanced_accuracy"):
        assert final[f"test/{name}"] == pytest.approx(metrics["test"][name]), name
    assert final["test/per_class/f1/0"] == pytest.approx(metrics["test"]["per_class"]["0"]["f1"])
    assert final["run/best_epoch"] == metrics["best_epoch"]
    assert final["run/best_val_accuracy"] == pytest.approx(metrics["monitor"]["best_value"])
    # MLflow's "Model metrics" tab orders its groups by name: the learning curves come first
    groups = sorted({key.rsplit("/", 1)[0] for key in final})
    assert groups[0] == "epoch", groups
    # tags and artifacts
    tags = run.data.tags
    assert tags["dataset"] == "npz" and tags["model"] == "mini_cnn"
    assert tags["config_hash"] == prov["config_hash"] == config_hash(cfg)
    assert tags["run_dir"] == str(run_dir.resolve()) and tags["mlflow.runName"] == "run"
    if IN_GIT_CHECKOUT:
        assert tags["git_commit"] == prov["git_commit"]
    files = {a.path for a in client(db).list_artifacts(run.info.run_id)}
    assert files >= {"report.md", "report.html", "metrics.json", "provenance.json",
                     "requirements.txt", "logs"}  # fmt: skip
    assert artifact_json(run, "provenance.json")["status"] == "completed"  # logged once final
    assert (tmp_path / "mlartifacts").is_dir()  # the artifact store sits beside the DB


def test_failed_run_is_recorded_as_failed_in_provenance_and_mlflow(tmp_path, db):
    bad, run_dir = tmp_path / "bad.npz", tmp_path / "run"
    bad.write_bytes(b"not a zip archive")
    handlers = logging.getLogger().handlers[:]
    with pytest.raises(DataError):
        train(compose(*tiny_overrides(bad, *with_mlflow(db))), output_dir=run_dir)

    prov = read_json(run_dir / "provenance.json")
    assert prov["status"] == "failed" and prov["error"].startswith("DataError: ")
    assert prov["finished"] is not None
    (run,) = mlflow_runs(db)
    assert run.info.status == "FAILED"
    assert run.data.tags["mlflow.runName"] == "failed · run"  # seen in the runs table
    assert artifact_json(run, "provenance.json")["status"] == "failed"
    # the run dir is released and logging restored
    assert logging.getLogger().handlers == handlers
    with RunDirectory(run_dir, {}, continues=True):  # only its own resume may reuse the dir
        pass


def test_sigterm_during_training_records_interrupted_and_mlflow_killed(tiny_npz, tmp_path, db):
    def sigterm_after_epoch_1(record, engine):  # as if SLURM preempted the job after epoch 1
        if record["epoch"] == 1:  # (callbacks run after the tracker has logged the epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    run_dir = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(compose(*tiny_overrides(tiny_npz, "training.epochs=3", *with_mlflow(db))), run_dir,
              [sigterm_after_epoch_1])  # fmt: skip

    prov = read_json(run_dir / "provenance.json")
    assert prov["status"] == "interrupted" and "SIGTERM" in prov["error"]
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    (run,) = mlflow_runs(db)
    assert run.info.status == "KILLED"
    assert run.data.tags["mlflow.runName"] == "interrupted · run"
    steps = [m.step for m in client(db).get_metric_history(run.info.run_id, "epoch/val_loss")]
    assert steps == [1]


def test_sweep_jobs_share_one_parent_that_ends_with_the_last_job(tmp_path, db):
    """The parent/child bookkeeping each job does through the store and the sweep dir."""
    from omegaconf import OmegaConf

    from orchard_app.tracking.mlflow_store import connect
    from orchard_app.tracking.mlflow_sweep import join_sweep, leave_sweep

    tracking = OmegaConf.create({"uri": f"sqlite:///{db}", "experiment": "x"})
    mlflow, experiment, _ = connect(tracking)
    sweep = tmp_path / "multirun" / "2026-01-01" / "10-00-00"

    def job(status: str | None) -> str:
        parent = join_sweep(mlflow, experiment, sweep)
        child = mlflow.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        if status:
            mlflow.set_terminated(child, status)
            leave_sweep(mlflow, experiment, parent, sweep)
        return parent

    parent = job(None)  # job 0 still running
    assert job("FINISHED") == parent  # job 1: same parent, kept RUNNING for job 0
    assert mlflow.get_run(parent).info.status == "RUNNING"
    job0 = mlflow.search_runs([experiment], "attributes.status = 'RUNNING'")
    (job0,) = [r for r in job0 if r.info.run_id != parent]
    mlflow.set_terminated(job0.info.run_id, "FAILED")
    leave_sweep(mlflow, experiment, parent, sweep)
    assert mlflow.get_run(parent).info.status == "FAILED"  # a failed child fails the sweep
    assert job("FINISHED") == parent  # a later job (an Optuna trial) reopens the same parent
    other = join_sweep(mlflow, experiment, tmp_path / "multirun" / "2026-01-01" / "11-00-00")
    assert other != parent


def study_config(db: Path, cwd: Path, **sweeper):
    """The launcher's config of `-m hpo=quick optimizer.lr=choice(...) dataset=npz`, as the
    study sweeper holds it (only the keys the study's page reads)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "tracking": {"name": "mlflow", "uri": f"sqlite:///{db}", "experiment": "orchard_app"},
        "training": {"monitor": "val_accuracy", "monitor_mode": "auto"},
        "dataset": {"name": "npz"}, "model": {"name": "mini_cnn"},
        "hydra": {"runtime": {"cwd": str(cwd), "choices": {"hpo": "quick"}},
                  "overrides": {"task": ["hpo=quick", "dataset=npz", "optimizer.lr=choice(0.1,0.01)",
                                         "training.batch_size=32", f"tracking.uri=sqlite:///{db}"]},
                  "sweeper": {"_target_": "orchard_app.hpo.sweeper.StudySweeper", "n_trials": 4,
                              "sampler": {"_target_": "optuna.samplers.TPESampler", "seed": 42},
                              "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_warmup_steps": 2},
                              "params": {"optimizer.lr": "tag(log, interval(1e-4, 3e-2))",
                                         "training.batch_size": "choice(32, 64)",
                                         "model.dropout": "interval(0.0, 0.5)"}, **sweeper}},
    })  # fmt: skip


def test_the_study_parent_run_is_its_page_kept_current_as_trials_end(db, tmp_path):
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from orchard_app.tracking import update_sweep_page
    from orchard_app.tracking.mlflow_store import connect
    from orchard_app.tracking.mlflow_sweep import join_sweep
    from orchard_app.tracking.sweep_page import page_name

    config, sweep = study_config(db, tmp_path), tmp_path / "study"
    mlflow, experiment, _ = connect(config.tracking)
    parent = join_sweep(mlflow, experiment, sweep)  # as the first tracked trial makes it
    (sweep / "figures").mkdir(parents=True)
    for name in (
        "study.csv",
        "top_trials.md",
        "best_config.yaml",
        "figures/optimization_history.png",
    ):
        (sweep / name).write_text("x")
    study = optuna.create_study(study_name="lr-search", direction="maximize")
    lr = {"optimizer.lr": FloatDistribution(1e-4, 1e-1)}

    def trial(state, value=None):
        study.add_trial(create_trial(state=state, value=value, params={"optimizer.lr": 0.01},
                                     distributions=lr, intermediate_values={1: 0.5}))  # fmt: skip

    trial(TrialState.COMPLETE, 0.6)
    trial(TrialState.PRUNED)
    update_sweep_page(config, sweep, study=study)  # after the first batch
    trial(TrialState.COMPLETE, 0.8)
    trial(TrialState.FAIL)
    trial(TrialState.COMPLETE, 0.7)
    config.hydra.sweeper.n_trials = 6  # the same command again, continued to 6 trials
    update_sweep_page(config, sweep, study=study)

    run = mlflow.get_run(parent)
    assert run.data.tags["mlflow.runName"] == "study lr-search · npz · mini_cnn · hpo=quick"
    assert page_name(config, "npz-mini_cnn-quick") == "study npz-mini_cnn-quick"  # says it all
    params = run.data.params
    assert params["space.optimizer.lr"] == "choice(0.1,0.01)"  # the command line's search wins
    assert params["space.model.dropout"] == "interval(0.0, 0.5)"
    assert "space.training.batch_size" not in params  # fixed on the command line
    assert params["fixed.training.batch_size"] == "32" and params["fixed.hpo"] == "quick"
    assert not [k for k in params if "tracking" in k]  # machine settings are not the study
    assert params["sampler"] == "TPESampler(seed=42)"
    assert params["pruner"] == "MedianPruner(n_warmup_steps=2)"
    assert params["direction"] == "maximize" and params["monitor"] == "val_accuracy"
    assert params["n_trials"] == "4" and run.data.tags["now.n_trials"] == "6"
    best = mlflow.get_metric_history(parent, "study/best_val_accuracy")
    assert sorted((m.step, m.value) for m in best) == [
        (0, 0.6),
        (1, 0.6),
        (2, 0.8),
        (3, 0.8),
        (4, 0.8),
    ]  # fmt: skip  (each step once)
    values = mlflow.get_metric_history(parent, "study/val_accuracy")
    assert sorted((m.step, m.value) for m in values) == [(0, 0.6), (2, 0.8), (4, 0.7)]
    metrics = run.data.metrics
    assert (metrics["study/trials_completed"], metrics["study/trials_pruned"],
            metrics["study/trials_failed"]) == (3, 1, 1)  # fmt: skip
    files = {a.path for a in mlflow.list_artifacts(parent)}
    assert files == {"study.csv", "top_trials.md", "best_config.yaml", "figures"}
    assert run.info.status == "RUNNING"  # the jobs say how the sweep ended, not the page


def test_a_sweep_page_needs_tracking_mlflow_and_never_imports_it_otherwise(tmp_path):
    code = ("import sys\nfrom omegaconf import OmegaConf\nfrom orchard_app.tracking import "
            "update_sweep_page\nupdate_sweep_page(OmegaConf.create({'tracking': {'name': 'none'}}),"
            " '.', jobs=[])\nprint(sorted(m for m in sys.modules if m.startswith('mlflow')))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_tracking_uri_defaults_to_sqlite_in_the_start_dir_and_rejects_the_file_store(tmp_path):
    from orchard_app.errors import TrackingError
    from orchard_app.tracking.mlflow_store import artifact_location, resolve_uri

    uri = resolve_uri("sqlite:///mlflow.db", tmp_path)
    assert uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert artifact_location(uri, None, tmp_path) == (tmp_path / "mlartifacts").as_uri()
    for old in ("./mlruns", "file:///tmp/mlruns"):
        with pytest.raises(TrackingError, match="sqlite:///mlflow.db"):
            resolve_uri(old, tmp_path)


def test_experiments_are_model_training_experiments_so_the_ui_opens_on_runs(db):
    """MLflow 3's UI opens an untagged experiment on its GenAI trace overview (issue 17)."""
    from omegaconf import OmegaConf

    from orchard_app.tracking.mlflow_store import connect

    kind = "mlflow.experimentKind"
    mlflow, created, _ = connect(OmegaConf.create({"uri": f"sqlite:///{db}", "experiment": "new"}))
    assert mlflow.get_experiment(created).tags[kind] == "custom_model_development"
    older = mlflow.create_experiment("older")  # made by an earlier orchard_app, or by hand
    assert kind not in mlflow.get_experiment(older).tags
    _, found, _ = connect(OmegaConf.create({"uri": f"sqlite:///{db}", "experiment": "older"}))
    assert found == older
    assert mlflow.get_experiment(older).tags[kind] == "custom_model_development"


def test_the_ui_hint_opens_the_runs_in_the_model_training_view():
    from orchard_app.tracking.links import ui_hint

    assert ui_hint("http://mlflow.lab:5000/", "7") == (
        "http://mlflow.lab:5000/#/experiments/7/runs?workflowType=machine_learning"
    )
    assert ui_hint("sqlite:////data/mlflow.db", "1", "abc") == (
        "mlflow ui --backend-store-uri sqlite:////data/mlflow.db, then open "
        "http://127.0.0.1:5000/#/experiments/1/runs/abc?workflowType=machine_learning"
    )


def test_an_absent_tracking_server_fails_within_its_timeout_naming_the_uri(tiny_npz, tmp_path):
    """MLflow's own retries take ~250 s to give up on a refused port; tracking.timeout_s=15 by
    default, 2 here (the test need not wait out the default)."""
    assert compose("tracking=mlflow").tracking.timeout_s == 15
    started = time.monotonic()
    result = run_cli("tracking=mlflow", "tracking.uri=http://127.0.0.1:9/", "tracking.timeout_s=2",
                     *tiny_overrides(tiny_npz), cwd=tmp_path)  # fmt: skip
    wall = time.monotonic() - started
    assert result.returncode == 1
    err = result.stderr
    assert "Traceback" not in err and "Retrying" not in err  # urllib3's retries: in the log files
    assert "could not reach the MLflow store http://127.0.0.1:9/ (tracking.uri=http" in err
    assert "Connection refused" in err and "tracking.timeout_s=2" in err
    assert int(re.search(r"gave up after (\d+) s", err)[1]) <= 2
    assert wall < 60, wall  # start-up and torch import included


def test_tracking_timeout_must_be_positive_or_null():
    from orchard_app.config.validate import validate
    from orchard_app.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tracking.timeout_s=0.0: must be > 0 seconds"):
        validate(compose("tracking=mlflow", "tracking.timeout_s=0"))
    validate(compose("tracking=mlflow", "tracking.timeout_s=null"))


def test_params_are_flat_json_for_lists_and_cut_to_mlflow_limits():
    from orchard_app.tracking.mlflow_tracker import MAX_PARAM_VAL_LENGTH, flatten

    flat = flatten({"a": {"b": 1, "c": [1, 2], "d": {}}, "e": None, "f": "x" * 10_000})
    assert flat["a.b"] == "1" and flat["a.c"] == "[1, 2]" and flat["a.d"] == "{}"
    assert flat["e"] == "None" and len(flat["f"]) == MAX_PARAM_VAL_LENGTH
    assert flatten({"per_class": {"granulocytes (immature)": 1}}) == {
        "per_class.granulocytes _immature_": "1"
    }  # a key MLflow would reject


def test_metric_names_group_in_the_ui_without_characters_mlflow_changes():
    """BreastMNIST's class `normal, benign` once became the key `test_f1/normal_ benign`."""
    from orchard_app.outcomes import Outcome
    from orchard_app.tracking.mlflow_tracker import final_metrics, run_name
    from orchard_app.tracking.names import epoch_metric

    summary = {
        "test": {"accuracy": 0.8, "per_class": {"normal, benign": {"f1": 0.9, "support": 12},
                                                "granulocytes (immature)": {"f1": 0.5}}},
        "monitor": {"name": "val_auc", "best_value": 0.95},
        "best_epoch": 3, "epochs_run": 5, "train_seconds": 12.5,
        "export": {"export/onnx_int8/batch_1_ms": 0.4},
    }  # fmt: skip
    assert final_metrics(summary) == {
        "test/accuracy": 0.8, "test/per_class/f1/normal_benign": 0.9,
        "test/per_class/support/normal_benign": 12.0,
        "test/per_class/f1/granulocytes_immature": 0.5, "run/best_val_auc": 0.95,
        "run/best_epoch": 3.0, "run/epochs_run": 5.0, "time/train_seconds": 12.5,
        "export/onnx_int8/batch_1_ms": 0.4,
    }  # fmt: skip
    assert [epoch_metric(k) for k in ("train_loss", "val_macro_f1", "lr", "seconds")] == [
        "epoch/train_loss", "epoch/val_macro_f1", "optimizer/lr", "time/epoch_seconds"]  # fmt: skip
    assert run_name("3_npz_mini_cnn_abc123", Outcome.PRUNED, 2) == (
        "pruned at epoch 2 · 3_npz_mini_cnn_abc123"
    )


# ---------------------------------------------------------------------- provenance
def test_provenance_records_code_config_environment_and_outcome(tiny_npz, tmp_path):
    cfg = compose(*tiny_overrides(tiny_npz, "hardware.num_threads=2"))
    train(cfg, output_dir=tmp_path / "run")

    prov = read_json(tmp_path / "run" / "provenance.json")
    assert prov["status"] == "completed"
    started, finished = (datetime.fromisoformat(prov[k]) for k in ("started", "finished"))
    assert started <= finished and started.tzinfo is not None
    assert prov["config_hash"] == config_hash(cfg) and len(prov["config_hash"]) == 32
    assert prov["config_hash_short"] == prov["config_hash"][:6]
    if IN_GIT_CHECKOUT:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()  # fmt: skip
        assert prov["git_commit"] == head and isinstance(prov["git_dirty"], bool)
    versions = prov["versions"]
    import torch

    assert versions["torch"] == metadata.version("torch") and versions["cuda"] == torch.version.cuda
    assert {"python", "orchard_app", "numpy", "hydra-core", "mlflow"} <= set(versions)
    assert prov["host"] == socket.gethostname() and prov["pid"] == os.getpid()
    assert prov["device"] == "cpu" and prov["threads"] == 2  # hardware.num_threads=2
    assert prov["command"] and prov["python_executable"] == sys.executable
    requirements = (tmp_path / "run" / "requirements.txt").read_text().splitlines()
    assert f"torch=={metadata.version('torch')}" in requirements


def test_git_fields_are_absent_outside_a_git_checkout(tmp_path, monkeypatch):
    assert provenance.git_state(tmp_path) == {}
    assert provenance.git_state(ROOT / "orchard_app") == {}  # inside a checkout, not its top
    monkeypatch.setattr(provenance, "PROJECT_DIR", tmp_path)  # as if installed from a tarball
    with RunDirectory(tmp_path / "run", {}):
        pass
    prov = read_json(tmp_path / "run" / "provenance.json")
    assert "git_commit" not in prov and "git_dirty" not in prov and prov["status"] == "completed"


# ---------------------------------------------------------------------- lock and run-dir names
def test_second_writer_on_a_busy_run_dir_fails_fast_naming_the_lock_holder(tmp_path):
    run = tmp_path / "run"
    holder = hold_lock(run)
    try:
        started = time.monotonic()
        with pytest.raises(RunLockedError) as err:
            RunDirectory(run, {}).__enter__()
        assert time.monotonic() - started < 5
        text = str(err.value)
        assert "locked" in text and str(run / ".run.lock") in text
        assert f"PID {holder.pid}" in text and socket.gethostname() in text
        assert not (run / "provenance.json").exists()  # the loser wrote nothing
    finally:
        holder.kill()
        holder.wait()


def test_lock_left_by_a_killed_process_does_not_block_the_next_run(tmp_path):
    run = tmp_path / "run"
    holder = hold_lock(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert read_json(run / ".run.lock.json")["pid"] == holder.pid  # what it left behind

    with RunDirectory(run, {}):
        assert read_json(run / ".run.lock.json")["pid"] == os.getpid()
    assert read_json(run / "provenance.json")["status"] == "completed"
    assert not (run / ".run.lock.json").exists()


def test_runs_claiming_one_dir_name_at_once_get_distinct_dirs(tmp_path):
    base = tmp_path / "outputs" / "2026-01-01" / "npz_mini_cnn_abc123_10-00-00"
    start = threading.Barrier(8)

    def claim(_):
        start.wait()
        return claim_unique_dir(str(base))

    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(claim, range(8)))
    assert sorted(dirs) == sorted([str(base)] + [f"{base}-{n}" for n in range(2, 9)])


# ---------------------------------------------------------------------- logging
def test_run_log_is_json_lines_with_the_run_id_including_warnings_and_other_threads(tmp_path):
    handlers = logging.getLogger().handlers[:]
    with RunDirectory(tmp_path / "run", {}) as run:
        logging.getLogger("orchard_app").info("hello %s", "there")
        warnings.warn("an orchard test warning", UserWarning, stacklevel=1)
        worker = threading.Thread(target=logging.getLogger("hydra").info, args=("from a thread",))
        worker.start()
        worker.join()
    assert logging.getLogger().handlers == handlers

    lines = [
        json.loads(line) for line in (run.path / "logs" / "run.jsonl").read_text().splitlines()
    ]
    assert lines and all(line["run_id"] == run.run_id for line in lines)
    events = " | ".join(line["event"] for line in lines)
    assert "hello there" in events and "from a thread" in events
    assert "an orchard test warning" in events
    text = (run.path / "logs" / "run.log").read_text()
    assert re.search(r"^\[\d\d:\d\d:\d\d\] hello there$", text, re.M)


def test_cli_run_with_tracking_none_never_imports_mlflow_and_prints_each_line_once(
    tiny_npz, tmp_path
):
    args = tiny_overrides(tiny_npz)
    result = run_cli(*args, cwd=tmp_path, python_args=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-3000:]

    lines = result.stderr.splitlines()
    imported = [
        line.rsplit("|", 1)[-1].strip() for line in lines if line.startswith("import time:")
    ]
    assert "torch" in imported
    assert not [m for m in imported if m.split(".")[0] == "mlflow"]
    console = [line for line in lines if line.startswith("[")]
    assert sum("epoch 1/1" in line for line in console) == 1
    assert len(console) == len(set(console)), "a console line was printed twice"

    run = only_run_dir(tmp_path)
    prov = read_json(run / "provenance.json")
    assert prov["command"] == shlex.join(["python", "-m", "orchard_app", *args])
    name = re.fullmatch(r"npz_mini_cnn_([0-9a-f]{6})_\d\d-\d\d-\d\d", run.name)
    assert name and name[1] == prov["config_hash"][:6]
    assert run.parent.name == prov["started"][:10]  # outputs/<date>/...
    jsonl = [json.loads(line) for line in (run / "logs" / "run.jsonl").read_text().splitlines()]
    assert jsonl and {line["run_id"] for line in jsonl} == {prov["run_id"]}


# ---------------------------------------------------------------------- end to end (slow)
@pytest.mark.slow
def test_multirun_with_mlflow_gives_one_parent_run_and_a_child_per_job(tiny_npz, tmp_path):
    result = run_cli("-m", "tracking=mlflow", *tiny_overrides(tiny_npz, "training.seed=1,2"),
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    db = tmp_path / "mlflow.db"  # the default URI, in the directory the app was started from
    assert db.is_file() and (tmp_path / "mlartifacts").is_dir()
    runs = mlflow_runs(db)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(runs) == 3 and len(children) == 2
    assert sorted(c.data.params["training.seed"] for c in children) == ["1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert all("test/accuracy" in c.data.metrics for c in children)
    from orchard_app.tracking.mlflow_store import local_path

    (sweep,) = (tmp_path / "multirun").glob("*/*")
    assert parent.data.tags["sweep_dir"] == str(sweep.resolve())
    assert "training.seed=1,2" in parent.data.tags["sweep_overrides"]
    # the grid's page: what it is, its swept and fixed values, its progress and summary table
    assert parent.data.tags["mlflow.runName"] == "sweep training.seed=1,2 · npz · mini_cnn"
    assert parent.data.params["space.training.seed"] == "1,2"
    assert parent.data.params["fixed.training.epochs"] == "1"
    assert parent.data.metrics["sweep/jobs_completed"] == 2
    best = max(c.data.metrics["run/best_val_accuracy"] for c in children)
    assert parent.data.metrics["sweep/best_val_accuracy"] == pytest.approx(best)
    summary = (local_path(parent.info.artifact_uri) / "sweep_summary.txt").read_text()
    assert summary.startswith(f"sweep {sweep}: 2 job(s): 2 completed")
    for child in children:
        prov = read_json(Path(child.data.tags["run_dir"]) / "provenance.json")
        assert prov["tracking"]["mlflow_parent_run_id"] == parent.info.run_id
    output = result.stdout + result.stderr
    assert output.count("job #0 launched: seed=1") == 1 and "Launching" not in output
    # where to look, once, under the summary: the runs page in the UI's model-training view
    hint = f"MLflow: mlflow ui --backend-store-uri sqlite:///{db}, then open http://127.0.0.1:5000/"
    assert output.count(hint) == 1
    assert f"#/experiments/{parent.info.experiment_id}/runs?workflowType=machine_learning" in output
    for noise in ("alembic", "Running upgrade", "Creating experiment", "View run", "INFO"):
        assert noise not in output, noise


@pytest.mark.slow
def test_multirun_jobs_in_other_processes_share_one_parent(tiny_npz, tmp_path):
    """hydra/launcher=submitit_local: each job is its own process, as on SLURM."""
    overrides = tiny_overrides(tiny_npz, "training.seed=1,2", "hardware.num_threads=1")
    result = run_cli("-m", "hydra/launcher=submitit_local", *with_mlflow(tmp_path / "mlflow.db"),
                     *overrides, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    runs = mlflow_runs(tmp_path / "mlflow.db")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    assert {r.data.tags.get("mlflow.parentRunId") for r in runs if r != parent} == {
        parent.info.run_id
    }
    pids = {read_json(Path(r.data.tags["run_dir"]) / "provenance.json")["pid"] for r in runs
            if r != parent}  # fmt: skip
    assert len(pids) == 2
    assert len(list((tmp_path / "multirun").glob("*/*"))) == 1  # one sweep dir, with .submitit/


def test_cli_on_a_busy_run_dir_fails_fast_with_the_lock_message(tiny_npz, tmp_path):
    run = tmp_path / "busy"
    holder = hold_lock(run)
    try:
        result = run_cli(f"hydra.run.dir={run}", *tiny_overrides(tiny_npz), cwd=tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode != 0
    assert "locked" in result.stderr and f"PID {holder.pid}" in result.stderr
    assert socket.gethostname() in result.stderr
    assert "Traceback" not in result.stderr and "epoch" not in result.stderr


@pytest.mark.slow
def test_two_runs_of_one_config_started_together_get_their_own_dirs(tiny_npz, tmp_path):
    # Both ask for the same name, as two runs of one config started in the same second do.
    args = ["hydra.run.dir=${orchard_unique:outputs/same}", *tiny_overrides(tiny_npz)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "orchard_app", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    dirs = sorted(p.name for p in (tmp_path / "outputs").iterdir())
    assert dirs == ["same", "same-2"]
    runs = [read_json(tmp_path / "outputs" / d / "provenance.json") for d in dirs]
    assert [r["status"] for r in runs] == ["completed", "completed"]
    assert runs[0]["pid"] != runs[1]["pid"]


@pytest.mark.slow
def test_sigterm_to_the_cli_marks_the_run_interrupted(tmp_path):
    npz = make_npz(tmp_path / "tiny.npz", counts=(960, 32, 32))
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchard_app", *tiny_overrides(npz, "training.epochs=50")],
        cwd=tmp_path, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list((tmp_path / "outputs").glob("*/*/checkpoints/last.pt")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    prov = read_json(only_run_dir(tmp_path) / "provenance.json")
    assert prov["status"] == "interrupted" and prov["finished"] is not None
