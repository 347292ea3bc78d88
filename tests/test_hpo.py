"""Optuna studies through Hydra: presets, pruning, resumable studies, early stop, failures,
artifacts, and the pins the study sweeper relies on."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from conftest import compose, make_npz, run_cli, sigint_as_in_a_terminal

STUDY = "optuna.db"
BARE = "hydra/sweeper=orchard_optuna"
GOOD, BAD = "3e-3", "1e-9"  # a learning rate that learns the tiny set, and one that cannot


THRESHOLD = (
    "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.5,n_warmup_steps:2}"
)


def study_args(npz: Path, sweep: Path, *extra: str, preset: str = "hpo=quick") -> list[str]:
    """A study on the tiny set: the quick preset, or (preset=hydra/sweeper=orchard_optuna) the
    bare sweeper, whose sampler and pruner the test chooses."""
    return ["-m", preset, f"hydra.sweep.dir={sweep}", "dataset=npz", f"dataset.path={npz}",
            "training.epochs=3", "training.batch_size=16", "evaluation.figures=false",
            "hardware.num_threads=1", "hydra.sweeper.params={}", *extra]  # fmt: skip


def rows(sweep: Path) -> list[dict]:
    with open(sweep / "study.csv") as f:
        return list(csv.DictReader(f))


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    return result


@pytest.fixture
def npz(tmp_path) -> Path:
    return make_npz(tmp_path / "tiny.npz")


def sweeper_config(*overrides: str):
    return compose(*overrides, return_hydra_config=True).hydra.sweeper


def test_presets_compose_with_their_search_spaces():
    quick = sweeper_config("hpo=quick")
    assert quick._target_ == "orchard_app.hpo.plugin.OrchardOptunaSweeper"
    assert set(quick.params) == {"optimizer.lr", "optimizer.weight_decay", "training.batch_size",
                                 "model.dropout"}  # fmt: skip
    assert quick.pruner._target_ == "optuna.pruners.MedianPruner" and quick.sampler.seed == 42
    assert quick.asynchronous is True and quick.max_retry == 1  # typed keys of the sweeper
    assert sweeper_config("hpo=quick", "hydra.sweeper.asynchronous=false").asynchronous is False
    full = sweeper_config("hpo=full")
    assert len(full.params) == 12 and "optimizer.momentum" in full.params


def test_pinned_plugin_and_the_private_attributes_the_sweeper_reads():
    """orchard_app/hpo reads these; a new release must be checked before the pin moves."""
    import optuna
    from hydra.core.utils import JobReturn, JobStatus
    from hydra_plugins.hydra_optuna_sweeper import _impl

    assert metadata.version("hydra-optuna-sweeper") == "1.4.0rc3"
    assert metadata.version("optuna").split(".")[0] == "5"
    assert callable(_impl.create_params_from_overrides)
    assert callable(_impl.OptunaSweeperImpl._to_grid_sampler_choices)
    study = optuna.create_study()
    trial = study.ask()
    assert study._storage.get_trial(trial._trial_id).number == trial.number
    job = JobReturn(status=JobStatus.FAILED)
    job.return_value = ValueError("x")
    with pytest.raises(ValueError):  # the sweeper reads a failed job's error through it
        _ = job.return_value


@pytest.mark.slow
def test_a_three_trial_study_writes_its_artifacts_and_best_config_reruns(npz, tmp_path):
    sweep = tmp_path / "sweep"
    result = ok(run_cli(*study_args(npz, sweep, "hydra.sweeper.n_trials=3",
                                    f"optimizer.lr=choice({GOOD},1e-3)"),
                        cwd=tmp_path))  # fmt: skip
    table = rows(sweep)
    assert [r["number"] for r in table] == ["0", "1", "2"]
    assert {r["state"] for r in table} == {"COMPLETE"} and all(r["job_dir"] for r in table)
    assert all(r["epochs_run"] == "3" for r in table)
    for name in ("top_trials.md", "best_config.yaml", STUDY, "figures/optimization_history.png",
                 "figures/intermediate_values.png"):  # fmt: skip
        assert (sweep / name).is_file(), name
    best = max(table, key=lambda r: float(r["value"]))
    assert f"best trial #{best['number']}: val_accuracy " in result.stderr

    rerun = ok(run_cli("--config-path", str(sweep), "--config-name", "best_config", cwd=tmp_path / "x"
                       if (tmp_path / "x").mkdir() is None else tmp_path))  # fmt: skip
    (run,) = (tmp_path / "x" / "outputs").glob("*/*")
    again = read_json(run / "metrics.json")
    original = read_json(Path(best["job_dir"]) / "metrics.json")
    assert again["monitor"]["best_value"] == pytest.approx(float(best["value"]))
    assert [h["train_loss"] for h in again["history"]] == [
        h["train_loss"] for h in original["history"]
    ]
    assert rerun.returncode == 0


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_trials_that_cannot_learn_are_pruned_not_failed(npz, tmp_path):
    sweep = tmp_path / "sweep"
    result = ok(run_cli(*study_args(npz, sweep, "training.epochs=4", "hydra/sweeper/sampler=grid",
                                    f"optimizer.lr=choice({GOOD},{BAD})", THRESHOLD, preset=BARE),
                        cwd=tmp_path))  # fmt: skip
    console_of_a_study(result.stderr, sweep)
    table = {r["params_optimizer.lr"]: r for r in rows(sweep)}
    assert table[str(float(GOOD))]["state"] == "COMPLETE"
    pruned = table[str(float(BAD))]
    assert pruned["state"] == "PRUNED" and pruned["epochs_run"] == "2"  # stopped after epoch 2
    prov = read_json(Path(pruned["job_dir"]) / "provenance.json")
    assert prov["status"] == "pruned" and prov["stopped_at_epoch"] == 2
    jobs = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert sorted(j["outcome"] for j in jobs) == ["completed", "pruned"]


def console_of_a_study(err: str, sweep: Path) -> None:
    """What the console says of the two-trial study above (one learns, one is pruned)."""
    clock = r"\[\d\d:\d\d:\d\d\] "
    launched = re.findall(rf"{clock}trial #(\d) launched: lr=(\S+)\n", err)
    assert sorted(launched) == [("0", "0.003"), ("1", "1e-09")] or sorted(launched) == [
        ("0", "1e-09"), ("1", "0.003")], err[-3000:]  # fmt: skip
    pruned = next(n for n, lr in launched if lr == "1e-09")
    assert re.search(rf"{clock}trial #{pruned} pruned at epoch 2 \| [12] ended", err)  # (a grid)
    assert f"orchard_app: trial #{pruned} pruned at epoch 2" in err  # the job's own line
    for noise in ("Launching", "env_set", "ORCHARD_HPO", "[I ", "A new study created"):
        assert noise not in err, noise
    closing = err[err.index("best trial #") :]
    assert re.match(r"best trial #\d: val_accuracy \d\.\d{4} with lr=0.003\n", closing)
    for name in ("study.csv", "top_trials.md", "figures/", "best_config.yaml"):
        assert f"\n  {name} " in closing, name
    assert (f"re-run the best trial: python -m orchard_app --config-path {sweep} "
            "--config-name best_config") in closing  # fmt: skip
    assert re.search(rf"dashboard[^:]*: optuna-dashboard sqlite:///{sweep}/optuna.db$", closing)
    assert str(sweep).startswith("/")  # so the URL has four slashes


@pytest.mark.slow
def test_n_trials_is_the_total_and_a_rerun_continues_the_numbering(npz, tmp_path):
    sweep = tmp_path / "sweep"
    ok(
        run_cli(
            *study_args(npz, sweep, "hydra.sweeper.n_trials=3", "training.epochs=1"), cwd=tmp_path
        )
    )
    first = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.json")}
    ok(
        run_cli(
            *study_args(npz, sweep, "hydra.sweeper.n_trials=5", "training.epochs=1"), cwd=tmp_path
        )
    )
    assert [r["number"] for r in rows(sweep)] == ["0", "1", "2", "3", "4"]
    after = {p.parent.name: p.stat().st_mtime_ns for p in sweep.glob("*/metrics.json")}
    assert sorted(name.split("_")[0] for name in after) == ["0", "1", "2", "3", "4"]
    assert {k: after[k] for k in first} == first  # the first three job dirs were not written again


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_a_trial_left_running_by_a_killed_sweep_is_failed_on_resume_and_a_live_workers_is_not(
    npz, tmp_path
):
    import optuna

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    study = optuna.create_study(study_name="orchard", storage=f"sqlite:///{sweep / STUDY}",
                                direction="maximize")  # fmt: skip
    gone = subprocess.Popen(["true"])
    gone.wait()
    study.ask().set_user_attr("worker", f"{socket.gethostname()}:{gone.pid}")  # its sweep died
    study.ask()  # asked a moment ago by a live worker that has not named itself on it yet
    ok(
        run_cli(
            *study_args(npz, sweep, "hydra.sweeper.n_trials=2", "training.epochs=1"), cwd=tmp_path
        )
    )
    table = rows(sweep)
    assert [(r["number"], r["state"]) for r in table] == [
        ("0", "FAIL"),
        ("1", "RUNNING"),  # the live worker's: left alone (failing it broke that worker's ask)
        ("2", "COMPLETE"),
    ]
    assert "left running by a stopped sweep" in table[0]["error"]


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_a_failing_trial_is_recorded_with_its_error_and_the_study_goes_on(npz, tmp_path):
    sweep = tmp_path / "sweep"
    result = ok(run_cli(*study_args(npz, sweep, "hydra/sweeper/sampler=grid", "training.epochs=1",
                                    "training.label_smoothing=choice(0.1,1.5)", preset=BARE),
                        cwd=tmp_path))  # fmt: skip
    table = {r["params_training.label_smoothing"]: r for r in rows(sweep)}
    assert table["0.1"]["state"] == "COMPLETE" and table["1.5"]["state"] == "FAIL"
    assert "training.label_smoothing=1.5: must be in [0, 1)" in table["1.5"]["error"]
    assert "Traceback" not in result.stderr


def test_too_many_failures_end_the_study_with_one_message(npz, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(*study_args(npz, sweep, "hydra.sweeper.n_trials=3", "training.label_smoothing=1.5",
                                 "hydra.sweeper.max_failure_rate=0.0"), cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "more than hydra.sweeper.max_failure_rate=0.0" in result.stderr
    assert len(rows(sweep)) == 1  # stopped after the first failure


def test_a_direction_against_the_monitor_is_refused_before_any_trial(npz, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(*study_args(npz, sweep, "hydra.sweeper.direction=minimize"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        "hydra.sweeper.direction=minimize contradicts training.monitor=val_accuracy"
        in result.stderr
    )
    assert not list(sweep.glob("*/provenance.json"))


@pytest.mark.slow
@pytest.mark.parametrize("stop", ["hpo.target=0.0", "hpo.patience=1"])
def test_the_study_stops_early(npz, tmp_path, stop):
    sweep = tmp_path / "sweep"
    result = ok(run_cli(*study_args(npz, sweep, "hydra.sweeper.n_trials=6", "training.epochs=1",
                                    "training.seed=0", stop), cwd=tmp_path))  # fmt: skip
    assert "study stops early" in result.stderr
    assert len(rows(sweep)) < 6


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_the_same_command_resumes_it(tmp_path):
    npz = make_npz(tmp_path / "d.npz", counts=(960, 32, 32))
    sweep = tmp_path / "sweep"
    args = study_args(npz, sweep, "hydra.sweeper.n_trials=2", "training.epochs=30")
    proc = subprocess.Popen([sys.executable, "-m", "orchard_app", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_as_in_a_terminal)  # fmt: skip
    try:
        for line in proc.stderr:
            if " 2/30  loss" in line:
                proc.send_signal(signal.SIGINT)
                break
        err = proc.stderr.read()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    stopped, queued = rows(sweep)
    assert stopped["state"] == "FAIL" and "queued again" in stopped["error"]
    assert queued["state"] == "WAITING"
    last = Path(stopped["job_dir"]) / "checkpoints" / "last.pt"
    assert (
        last.is_file()
        and read_json(last.parent.parent / "provenance.json")["status"] == "interrupted"
    )

    time.sleep(0.1)
    args[args.index("training.epochs=30")] = "training.epochs=1"
    ok(run_cli(*args, cwd=tmp_path))
    table = rows(sweep)
    assert [r["state"] for r in table] == ["FAIL", "COMPLETE", "COMPLETE"]
    assert table[1]["params_optimizer.lr"] == stopped["params_optimizer.lr"]  # retried first


@pytest.mark.slow
def test_pruning_works_across_processes_with_submitit(npz, tmp_path):
    sweep = tmp_path / "sweep"
    ok(run_cli(*study_args(npz, sweep, "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5",
                           "training.epochs=4", "hydra/sweeper/sampler=grid", "hydra.sweeper.n_jobs=2",
                           f"optimizer.lr=choice({GOOD},{BAD})", THRESHOLD, preset=BARE),
               cwd=tmp_path, timeout=600))  # fmt: skip
    states = {r["params_optimizer.lr"]: r["state"] for r in rows(sweep)}
    assert states == {str(float(GOOD)): "COMPLETE", str(float(BAD)): "PRUNED"}
    pids = {read_json(Path(r["job_dir"]) / "provenance.json")["pid"] for r in rows(sweep)}
    assert len(pids) == 2 and os.getpid() not in pids


# ---------------------------------------------------------------- a real PostgreSQL storage
@pytest.mark.slow
def test_a_study_in_a_postgresql_server_is_shared_by_its_jobs_and_resumed(
    npz, tmp_path, postgres_url
):
    import optuna

    sweep = tmp_path / "sweep"
    args = [
        f"hydra.sweeper.storage={postgres_url}",
        "training.epochs=2",
        "hydra.sweeper.study_name=pg",
    ]
    ok(run_cli(*study_args(npz, sweep, "hydra.sweeper.n_trials=2", *args), cwd=tmp_path))
    ok(run_cli(*study_args(npz, sweep, "hydra.sweeper.n_trials=3", *args), cwd=tmp_path))
    study = optuna.load_study(study_name="pg", storage=postgres_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert all(len(t.intermediate_values) == 2 for t in study.trials)  # reported by the jobs
    assert not (sweep / STUDY).exists()


@pytest.mark.slow
def test_tracked_trials_are_children_of_the_study_and_pruned_ones_say_so(npz, tmp_path):
    from mlflow import MlflowClient

    db, sweep = tmp_path / "mlflow.db", tmp_path / "sweep"
    ok(run_cli(*study_args(npz, sweep, "training.epochs=4", "hydra/sweeper/sampler=grid",
                           f"optimizer.lr=choice({GOOD},{BAD})", THRESHOLD, "tracking=mlflow",
                           f"tracking.uri=sqlite:///{db}", preset=BARE), cwd=tmp_path))  # fmt: skip
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "orchard_app"]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("orchard.role") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    by_outcome = {r.data.tags["orchard.outcome"]: r for r in children}
    assert set(by_outcome) == {"completed", "pruned"}
    pruned = by_outcome["pruned"]
    assert pruned.info.status == "FINISHED" and pruned.data.tags["orchard.stopped_at_epoch"] == "2"
    assert parent.info.status == "FINISHED"  # a pruned trial never fails the study's run
