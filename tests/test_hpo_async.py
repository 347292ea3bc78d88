"""Studies that keep every slot busy: asynchronous trials on hydra/launcher=local, several
workers on one study, and lost trials noticed by their heartbeats and retried."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_npz, run_cli, sigint_as_in_a_terminal
from test_hpo import ok, rows, study_args

pytestmark = pytest.mark.slow
LOCAL = ["hydra/launcher=local", "hydra.launcher.timeout_min=10", "hydra.sweeper.n_jobs=2"]


def trials(url: str, name: str | None = None):
    """The trials of the study `name`, or of the storage's only study (named after the run)."""
    import optuna

    return optuna.load_study(study_name=name, storage=url).trials


def test_a_free_slot_starts_the_next_trial_while_a_longer_one_runs(tmp_path):
    npz = make_npz(tmp_path / "d.npz", counts=(480, 32, 32))
    sweep = tmp_path / "sweep"
    args = study_args(npz, sweep, *LOCAL, "hydra/sweeper/sampler=grid",
                      "training.epochs=choice(1,10)", "model.dropout=choice(0.0,0.1)",
                      preset="hydra/sweeper=orchard_optuna")  # fmt: skip
    ok(run_cli(*[a for a in args if a != "training.epochs=3"], cwd=tmp_path, timeout=900))
    done = trials(f"sqlite:///{sweep / 'optuna.db'}")
    assert [t.state.name for t in done] == ["COMPLETE"] * 4
    first, second = done[0], done[1]
    longer = max(first, second, key=lambda t: t.datetime_complete)
    # the third trial started when the shorter of the first two ended, not after both
    assert done[2].datetime_start < longer.datetime_complete
    assert len({r["job_dir"] for r in rows(sweep)}) == 4


def test_ctrl_c_stops_the_trials_in_flight_and_the_same_command_continues_to_the_total(tmp_path):
    npz = make_npz(tmp_path / "d.npz", counts=(960, 32, 32))
    sweep = tmp_path / "sweep"
    args = study_args(npz, sweep, *LOCAL, "hydra.sweeper.n_trials=4", "training.epochs=40")
    proc = subprocess.Popen([sys.executable, "-m", "orchard_app", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE,
                            text=True, preexec_fn=sigint_as_in_a_terminal)  # fmt: skip
    url = f"sqlite:///{sweep / 'optuna.db'}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # both slots busy, each trial past its first epoch
            time.sleep(1)
            try:
                running = [t for t in trials(url) if t.intermediate_values]
            except Exception:
                continue
            if len(running) == 2:
                break
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=180)[1]
    finally:  # a study that outlived a failed assertion would load the tests after it
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert "study interrupted" in err
    table = rows(sweep)
    stopped = [r for r in table if r["state"] == "FAIL"]
    assert len(stopped) == 2 and all("queued again" in r["error"] for r in stopped)
    assert [r["state"] for r in table].count("WAITING") == 2
    for r in stopped:  # each job was stopped, and saved where it was
        assert (Path(r["job_dir"]) / "checkpoints" / "last.pt").is_file()

    args[args.index("training.epochs=40")] = "training.epochs=1"
    ok(run_cli(*args, cwd=tmp_path, timeout=900))
    table = rows(sweep)
    assert [r["state"] for r in table].count("COMPLETE") == 4 and len(table) == 6
    retried = {r["params_optimizer.lr"] for r in table[2:4]}
    assert retried == {r["params_optimizer.lr"] for r in stopped}  # queued ones first


def test_two_workers_share_one_postgresql_study(tmp_path, postgres_url):
    npz = make_npz(tmp_path / "d.npz")
    common = [f"hydra.sweeper.storage={postgres_url}", "hydra.sweeper.study_name=shared",
              "hydra.sweeper.n_trials=5", "training.epochs=1"]  # fmt: skip
    procs = [subprocess.Popen([sys.executable, "-m", "orchard_app",
                               *study_args(npz, tmp_path / f"w{i}", *common)], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
             for i in range(2)]  # fmt: skip
    for proc in procs:
        err = proc.communicate(timeout=600)[1]
        assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    done = trials(postgres_url, "shared")
    counted = [t for t in done if t.state.name == "COMPLETE"]
    assert len(counted) == 5 and len({t.number for t in done}) == len(done)
    assert len({tuple(sorted(t.params.items())) for t in counted}) == 5  # no repeated values
    dirs = [p for i in range(2) for p in (tmp_path / f"w{i}").glob("[0-9]*_*")]
    assert len(dirs) == len({p.name for p in dirs}) == 5  # each trial's dir, written once
    assert {int(p.name.split("_")[0]) for p in dirs} == {t.number for t in counted}


def test_a_killed_trial_is_failed_by_its_heartbeat_and_retried_during_the_study(tmp_path):
    npz = make_npz(tmp_path / "d.npz", counts=(960, 32, 32))
    url = f"sqlite:///{tmp_path / 'study.db'}"
    common = [f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=2",
              "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=4"]  # fmt: skip
    a = subprocess.Popen([sys.executable, "-m", "orchard_app",
                          *study_args(npz, tmp_path / "a", *common, "training.epochs=50")],
                         cwd=tmp_path, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not _reported(url):
        time.sleep(1)
    b = subprocess.Popen([sys.executable, "-m", "orchard_app",
                          *study_args(npz, tmp_path / "b", *common, *LOCAL[:2], "training.epochs=1")],
                         cwd=tmp_path, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    for line in b.stderr:  # B has opened the study (and seen A's trial running): A dies
        if "trial(s) so far" in line:
            os.kill(a.pid, signal.SIGKILL)
            break
    err = b.stderr.read()
    b.wait(timeout=600)
    a.wait(timeout=60)
    assert b.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "lost and retried: trial 0 as 2" in err
    with open(tmp_path / "b" / "study.csv") as f:
        table = {r["number"]: r for r in csv.DictReader(f)}
    assert table["0"]["state"] == "FAIL" and "no heartbeat" in table["0"]["error"]
    assert table["0"]["retried_as"] == "2" and table["2"]["retry_of"] == "0"
    assert table["2"]["state"] == "COMPLETE"
    assert table["2"]["params_optimizer.lr"] == table["0"]["params_optimizer.lr"]
    assert [r["state"] for r in table.values()].count("COMPLETE") == 2


def _reported(url: str) -> bool:
    try:
        return any(t.intermediate_values for t in trials(url))
    except Exception:
        return False


def _create(url: str) -> int:
    import optuna

    from orchard_app.hpo.storage import open_storage

    study = optuna.create_study(study_name="s", storage=open_storage(url), load_if_exists=True)
    return study._study_id


@pytest.mark.parametrize("attempt", range(2))
def test_sweeps_creating_one_sqlite_study_at_the_same_instant_share_it(tmp_path, attempt):
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        ids = pool.map(_create, [url] * 4)  # an IntegrityError on alembic_version before
    assert len(set(ids)) == 1


def test_a_storage_that_stops_mid_study_is_one_message_and_the_same_command_resumes(
    tmp_path,
    postgres_server,
):
    url, ctl = postgres_server
    npz = make_npz(tmp_path / "d.npz", counts=(960, 32, 32))
    sweep = tmp_path / "sweep"
    args = study_args(npz, sweep, f"hydra.sweeper.storage={url}", "hydra.sweeper.n_trials=2",
                      "training.epochs=6", "hydra.sweeper.pruner=null")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "orchard_app", *args], cwd=tmp_path,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    for line in proc.stderr:
        if " 2/6  loss" in line:  # the first trial is training: the server stops
            ctl("stop")
            break
    err = proc.stderr.read()
    proc.wait(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    assert err.count("stopped answering") == 2  # the job's line, and the sweep's message
    assert "the study storage postgresql://postgres@127.0.0.1" in err
    (row,) = [json.loads(line) for line in (sweep / "jobs.jsonl").read_text().splitlines()]
    assert row["outcome"] == "completed"  # the trained job kept its own outcome
    first_value = row["value"]

    ctl("start")
    args[args.index("training.epochs=6")] = "training.epochs=1"
    ok(run_cli(*args, cwd=tmp_path, timeout=600))
    done = trials(url)
    assert [t.state.name for t in done] == ["COMPLETE", "COMPLETE"]
    assert done[0].value == pytest.approx(first_value)  # told from its jobs.jsonl row


def test_a_resumed_study_and_a_second_sweep_on_it_draw_new_values(tmp_path):
    """The seeded sampler restarts in each process: without its own seed per ask, a resumed
    study still in its random start-up (or a second worker) drew trial #0's values again."""
    npz = make_npz(tmp_path / "d.npz")
    url = f"sqlite:///{tmp_path / 'study.db'}"
    for sweep, n in (("a", 1), ("a", 2), ("b", 3)):
        ok(run_cli(*study_args(npz, tmp_path / sweep, f"hydra.sweeper.storage={url}",
                               f"hydra.sweeper.n_trials={n}", "training.epochs=1"), cwd=tmp_path))  # fmt: skip
    done = trials(url)
    assert [t.state.name for t in done] == ["COMPLETE"] * 3
    assert len({tuple(sorted(t.params.items())) for t in done}) == 3


def test_a_killed_job_of_a_journal_study_is_noticed_by_the_launcher_and_retried(tmp_path):
    npz = make_npz(tmp_path / "d.npz", counts=(480, 32, 32))
    sweep = tmp_path / "sweep"
    args = study_args(npz, sweep, "hydra/launcher=local", "hydra.launcher.timeout_min=10",
                      f"hydra.sweeper.storage=journal:///{tmp_path / 'study.journal'}",
                      "hydra.sweeper.n_trials=2", "training.epochs=6")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "orchard_app", *args], cwd=tmp_path,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not list(sweep.glob("0_*/checkpoints/last.pt")):
        time.sleep(0.5)
    (run,) = sweep.glob("0_*")
    os.kill(json.loads((run / "provenance.json").read_text())["pid"], signal.SIGKILL)
    err = proc.communicate(timeout=900)[1]
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    assert "lost and retried: trial 0 as 1" in err
    table = {r["number"]: r for r in rows(sweep)}
    assert table["0"]["state"] == "FAIL" and "without a result" in table["0"]["error"]
    assert table["0"]["retried_as"] == "1" and table["1"]["retry_of"] == "0"
    assert [r["state"] for r in table.values()] == ["FAIL", "COMPLETE", "COMPLETE"]
