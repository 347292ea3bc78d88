"""Sweeps on a real one-node SLURM cluster (../shared/slurm/local-slurm.sh): one job array per
sweep, failures and timeouts reported, jobs killed from outside never waited for forever,
requeue after SIGUSR2 or `scontrol requeue` continuing the same run dir, and an Optuna study
with pruning across array tasks."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import compose, make_npz, tiny_overrides

from orchard_app import train

pytestmark = [pytest.mark.slow, pytest.mark.slurm]
# 1 CPU and 1 GB a task, so that two array tasks run side by side on the 2-CPU node
SMALL = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=1",
         "hardware.num_threads=1"]  # fmt: skip


def sweep(
    tmp_path: Path, *args: str, timeout: float = 600
) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "sweep"
    done = subprocess.run([sys.executable, "-m", "orchard_app", "-m", *SMALL, f"hydra.sweep.dir={out}",
                           *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    return done, out


def jobs(out: Path) -> dict[int, dict]:
    rows = [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]
    return {r["job"]: r for r in rows}  # the last row of each job


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def test_a_sweep_is_one_job_array_and_brings_back_every_value(cluster, tmp_path):
    a, b = make_npz(tmp_path / "a.npz"), make_npz(tmp_path / "b.npz", classes=4)
    done, out = sweep(tmp_path, "dataset=npz", f"dataset.path={a},{b}", "model=mini_cnn",
                      "training.seed=1,2", "training.epochs=1", "evaluation.figures=false")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = jobs(out)
    assert sorted(rows) == [0, 1, 2, 3] and {r["outcome"] for r in rows.values()} == {"completed"}
    arrays, tasks = set(), set()
    for row in rows.values():
        prov = read_json(Path(row["run_dir"]) / "provenance.json")
        metrics = read_json(Path(row["run_dir"]) / "metrics.json")
        assert metrics["monitor"]["best_value"] == pytest.approx(row["value"])
        arrays.add(prov["env"]["SLURM_ARRAY_JOB_ID"])
        tasks.add(prov["env"]["SLURM_ARRAY_TASK_ID"])
        assert Path(prov["env"]["submitit_stderr"]).is_file()
    assert len(arrays) == 1 and tasks == {"0", "1", "2", "3"}
    assert "4 job(s): 4 completed" in done.stderr


def test_a_failing_task_is_reported_with_its_log_while_the_others_complete(cluster, tmp_path):
    npz = make_npz(tmp_path / "a.npz")
    done, out = sweep(tmp_path, *tiny_overrides(npz), "hardware.num_threads=1",
                      "training.label_smoothing=0.0,0.1,1.5,0.2")  # fmt: skip
    assert done.returncode == 1
    rows = jobs(out)
    assert [rows[i]["outcome"] for i in range(4)] == [
        "completed",
        "completed",
        "failed",
        "completed",
    ]
    assert "training.label_smoothing=1.5" in rows[2]["error"] and Path(rows[2]["log"]).is_file()
    assert f"log: {rows[2]['log']}" in done.stderr


def _wait_for(path_glob: str, base: Path, proc: subprocess.Popen, seconds: float = 180) -> Path:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = list(base.glob(path_glob))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(1)
    raise AssertionError(f"no {path_glob} under {base} after {seconds} s")


def _background_sweep(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    out = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "orchard_app", "-m", *SMALL, f"hydra.sweep.dir={out}",
                             *args], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL)  # fmt: skip
    return proc, out


def _once_epoch_1_is_saved(proc: subprocess.Popen, out: Path, *command: str, timeout: float,
                           check: bool = False) -> tuple[Path, str]:  # fmt: skip
    """Once the sweep's job has written last.pt, run `command <its SLURM job id>`; then wait for
    the sweep to end. Returns the run dir and the sweep's stderr."""
    try:
        run = _wait_for("*/checkpoints/last.pt", out, proc).parent.parent
        job_id = read_json(run / "provenance.json")["env"]["SLURM_JOB_ID"]
        subprocess.run([*command, job_id], check=check)
        _, err = proc.communicate(timeout=timeout)
    finally:
        proc.kill()
    return run, err


def _task_id(run: Path) -> str:
    """`<array job>_<task>`: the one array task (SLURM_JOB_ID alone may name the whole array);
    a batch of one job is a plain job."""
    env = read_json(run / "provenance.json")["env"]
    if "SLURM_ARRAY_JOB_ID" not in env:
        return env["SLURM_JOB_ID"]
    return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"


def raw_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "jobs.jsonl").read_text().splitlines()]


def test_a_job_cancelled_from_outside_is_one_cancelled_row_and_exit_1(cluster, tmp_path):
    npz = make_npz(tmp_path / "d.npz", counts=(1600, 64, 64))
    proc, out = _background_sweep(tmp_path, *tiny_overrides(npz), "training.epochs=1,200",
                                  "hardware.num_threads=1")  # fmt: skip
    try:
        run = _wait_for("1_*/checkpoints/last.pt", out, proc).parent.parent
        subprocess.run(["scancel", _task_id(run)], check=True)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 1 and "Traceback" not in err, err[-3000:]
    rows = jobs(out)
    assert (rows[0]["outcome"], rows[1]["outcome"]) == ("completed", "cancelled"), err[-3000:]
    assert [r["job"] for r in raw_rows(out)].count(1) == 1  # one row: no `interrupted` before
    assert "was cancelled (scancel)" in rows[1]["error"] and "(None)" not in err
    assert err.count("job #1 cancelled |") == 1 and "#1 interrupted" not in err  # one line
    assert "interrupted" not in err.split("sweep " + str(out))[-1]  # the summary table


def test_a_timeout_with_no_requeue_left_is_reported_and_the_same_sweep_names_the_way_out(
    cluster, tmp_path
):
    npz = make_npz(tmp_path / "d.npz", counts=(4800, 64, 64))
    args = (*tiny_overrides(npz, "training.epochs=50"), "hardware.num_threads=1",
            "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=15",
            "hydra.launcher.max_num_timeout=0")  # fmt: skip
    started = time.monotonic()
    done, out = sweep(tmp_path, *args)  # no requeue left: reported as a timeout
    assert done.returncode == 1 and time.monotonic() - started < 240, done.stderr[-3000:]
    (row,) = raw_rows(out)  # one row: not `requeued` first
    assert row["outcome"] == "timeout" and "max_num_timeout" in row["error"]
    assert "requeued (it resumes" not in done.stderr  # no progress line says it will
    assert (Path(row["run_dir"]) / "checkpoints" / "last.pt").is_file()  # progress was saved
    prov = read_json(Path(row["run_dir"]) / "provenance.json")  # the run's record agrees
    assert prov["status"] == prov["attempts"][-1]["outcome"] == "timeout", prov["attempts"]

    again, _ = sweep(tmp_path, *args)  # the same command: its job's run dir holds the first run
    (row,) = jobs(out).values()
    assert again.returncode == 1 and row["outcome"] == "failed", again.stderr[-3000:]
    assert "from an earlier sweep" in row["error"] and "plus training.resume=auto" in row["error"]
    assert "new hydra.sweep.dir" in row["error"]

    proc, _ = _background_sweep(tmp_path, *args, "training.resume=auto")
    try:  # the way out: the same run dir continues from its last.pt (then it is cancelled)
        run = Path(row["run_dir"])
        deadline = time.monotonic() + 180
        while len(read_json(run / "provenance.json")["attempts"]) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(1)
        subprocess.run(["scancel", _task_id(run)], check=True)
        _, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    attempts = read_json(run / "provenance.json")["attempts"]
    assert attempts[-1]["resumed_from"].endswith("last.pt"), attempts
    assert jobs(out)[0]["outcome"] == "cancelled" and "Traceback" not in err


def _straight_metrics(tmp_path: Path, npz: Path, epochs: int) -> dict:
    run = tmp_path / "straight"
    train(compose(*tiny_overrides(npz, f"training.epochs={epochs}", "hardware.deterministic=true",
                                  "hardware.num_threads=1")), run)  # fmt: skip
    return read_json(run / "metrics.json")["test"]


def test_a_job_warned_before_its_time_limit_is_requeued_and_resumes_exactly(cluster, tmp_path):
    """A 1-minute limit with SIGUSR2 15 s before it; the warning is also sent by hand once the
    first epoch is saved, so the job is cut however fast this machine is today."""
    npz = make_npz(tmp_path / "d.npz", counts=(1600, 64, 64))
    args = tiny_overrides(npz, "training.epochs=10", "hardware.deterministic=true")
    proc, out = _background_sweep(tmp_path, *args, "hardware.num_threads=1",
                                  "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=15",
                                  "hydra.launcher.max_num_timeout=6")  # fmt: skip
    _, err = _once_epoch_1_is_saved(proc, out, "scancel", "--signal=USR2", timeout=600)
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    (row,) = jobs(out).values()
    prov = read_json(Path(row["run_dir"]) / "provenance.json")
    outcomes = [a["outcome"] for a in prov["attempts"]]
    assert outcomes[0] == "requeued" and outcomes[-1] == "completed", outcomes
    metrics = read_json(Path(row["run_dir"]) / "metrics.json")
    assert metrics["resumed_from"].endswith("last.pt")
    assert metrics["test"] == _straight_metrics(tmp_path, npz, 10)


def test_a_preempted_job_requeued_by_slurm_continues_its_run_dir(cluster, tmp_path):
    npz = make_npz(tmp_path / "d.npz", counts=(1600, 64, 64))
    args = tiny_overrides(npz, "training.epochs=8", "hardware.deterministic=true")
    proc, out = _background_sweep(tmp_path, *args, "hardware.num_threads=1")
    run, err = _once_epoch_1_is_saved(proc, out, "scontrol", "requeue", timeout=400, check=True)
    assert proc.returncode == 0, err[-3000:]
    prov = read_json(run / "provenance.json")
    assert len(prov["attempts"]) >= 2 and prov["attempts"][-1]["outcome"] == "completed"
    assert prov["attempts"][-1]["env"]["SLURM_RESTART_COUNT"] == "1"
    assert read_json(run / "metrics.json")["test"] == _straight_metrics(tmp_path, npz, 8)


def test_an_optuna_study_prunes_across_array_tasks(cluster, tmp_path):
    npz = make_npz(tmp_path / "a.npz")
    done, out = sweep(tmp_path, "hydra/sweeper=orchard_optuna", "hydra/sweeper/sampler=grid",
                      "hydra.sweeper.n_jobs=2", "optimizer.lr=choice(3e-3,1e-9)",
                      "hydra.sweeper.pruner={_target_:optuna.pruners.ThresholdPruner,lower:0.5,n_warmup_steps:2}",
                      *tiny_overrides(npz, "training.epochs=4"), "hardware.num_threads=1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "optuna.journal").is_file() and not (out / "optuna.db").exists()
    with open(out / "study.csv") as f:
        states = {r["params_optimizer.lr"]: r["state"] for r in csv.DictReader(f)}
    assert states == {"0.003": "COMPLETE", "1e-09": "PRUNED"}


def test_a_two_task_job_trains_with_ddp_and_matches_one_process(cluster, tmp_path):
    """tasks_per_node=2: SLURM starts both tasks, they find each other from SLURM's variables
    (the first host of the step, a port from the job id), train one run with gloo, and rank 0
    alone writes it. Same recipe in one process: the tolerance of tests/test_ddp.py."""
    npz = make_npz(tmp_path / "d.npz", counts=(96, 31, 33))
    recipe = tiny_overrides(npz, "training.epochs=2", "training.batch_size=16", "optimizer=sgd",
                            "hardware.deterministic=true", "model.dropout=0")  # fmt: skip
    done, out = sweep(tmp_path, *recipe, "hardware=ddp", "hardware.device=cpu",
                      "hydra.launcher.tasks_per_node=2", "hardware.num_threads=1")  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = jobs(out).values()
    assert row["outcome"] == "completed"
    assert [p.name for p in out.iterdir() if p.is_dir() and (p / "provenance.json").exists()] == [
        Path(row["run_dir"]).name
    ]  # one run dir: rank 1 wrote none of its own
    prov = read_json(Path(row["run_dir"]) / "provenance.json")
    assert (prov["world_size"], prov["launcher"], prov["backend"]) == (2, "slurm", "gloo")

    one = tmp_path / "one"
    train(compose(*recipe, "hardware.num_threads=1"), one)
    a, b = read_json(one / "metrics.json"), read_json(Path(row["run_dir"]) / "metrics.json")
    # Same predictions; losses to 1e-3: SLURM's tasks run their kernels in their own
    # environment, and on an AMD EPYC node the 2 x 8 batches rounded 4.6e-4 away from 1 x 16
    # (1e-4 held on the Intel node these tests were first run on; tests/test_ddp.py's
    # in-process ranks still meet it)
    assert b["test"]["accuracy"] == a["test"]["accuracy"]
    assert b["test"]["loss"] == pytest.approx(a["test"]["loss"], rel=1e-3)
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-3)


def test_a_study_keeps_both_slots_busy_with_one_job_per_trial_and_a_requeued_trial_resumes(
    cluster, tmp_path
):
    """n_jobs=2: a trial starts when one ends, each trial its own SLURM job; the long trial is
    warned by SIGUSR2 once it saved an epoch, requeued, and finishes in its own run dir."""
    import optuna

    npz = make_npz(tmp_path / "d.npz", counts=(1600, 64, 64))
    proc, out = _background_sweep(
        tmp_path, "hydra/sweeper=orchard_optuna", "hydra/sweeper/sampler=grid",
        "hydra.sweeper.n_jobs=2", "training.epochs=choice(1,12)", "model.dropout=choice(0.0,0.1)",
        *[a for a in tiny_overrides(npz) if a != "training.epochs=1"], "hydra.sweeper.pruner=null",
    )  # fmt: skip
    try:
        deadline, run = time.monotonic() + 400, None
        while run is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            for last in out.glob("*/checkpoints/last.pt"):
                overrides = (last.parent.parent / ".hydra" / "overrides.yaml").read_text()
                if "training.epochs=12" in overrides:
                    run = last.parent.parent
            time.sleep(1)
        assert run is not None, "no 12-epoch trial saved an epoch"
        job_id = read_json(run / "provenance.json")["env"]["SLURM_JOB_ID"]
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
        _, err = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in err, err[-3000:]
    from orchard_app.hpo.storage import open_storage

    journal = open_storage(f"journal:///{out / 'optuna.journal'}")
    trials = optuna.load_study(study_name=None, storage=journal).trials  # its only study
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    longer = max(trials[:2], key=lambda t: t.datetime_complete)
    assert trials[2].datetime_start < longer.datetime_complete  # no batch barrier
    ids = {read_json(Path(t.user_attrs["job_dir"]) / "provenance.json")["env"]["SLURM_JOB_ID"]
           for t in trials}  # fmt: skip
    assert len(ids) == 4  # one job per trial, not an array
    attempts = [a["outcome"] for a in read_json(run / "provenance.json")["attempts"]]
    assert attempts[0] == "requeued" and attempts[-1] == "completed", attempts
    assert read_json(run / "metrics.json")["resumed_from"].endswith("last.pt")
