"""The submitit fence, without a cluster: the pinned plugin's `launch` our copy mirrors, how the
SLURM launcher collects results and reports a lost job (fake submitit jobs whose result pickles
are really written, fake `scontrol` and `sbatch` first on PATH), one `hydra/launcher=local` sweep.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import pickle
import threading
from importlib import metadata
from pathlib import Path

import pytest
from conftest import run_cli, tiny_overrides
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as stock
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
from omegaconf import OmegaConf
from submitit.core.utils import FailedJobError, JobPaths, UncompletedJobError, cloudpickle_dump

from orchard_app.cluster import plugin
from orchard_app.cluster.scontrol import job_state
from orchard_app.rundir.layout import JOBS, METRICS

SHOW_JOB = ("JobId=4243 ArrayJobId=4241 ArrayTaskId=1 JobName=__main__ UserId=me(1000) "
            "GroupId=me(1000) Priority=1 Nice=0 Account=(null) QOS=(null) JobState={state} "
            "Reason={reason} Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 ExitCode=0:15 "
            "RunTime=00:01:02 TimeLimit=00:01:00 Partition=debug NodeList=node1")  # fmt: skip
INVALID_ID = "slurm_load_jobs error: Invalid job id specified"


def fake_tool(tmp_path: Path, monkeypatch, name: str, body: str) -> None:
    """An executable `name` first on PATH, running the shell `body`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
    (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def fake_scontrol(tmp_path: Path, monkeypatch, state: str = "", reason: str = "") -> Path:
    """`scontrol show job -o <id>` answering `state` (a job SLURM no longer knows without one)."""
    calls = tmp_path / "scontrol_calls"
    answer = (f'echo "{SHOW_JOB.format(state=state, reason=reason)}"' if state
              else f'echo "{INVALID_ID}" >&2; exit 1')  # fmt: skip
    fake_tool(tmp_path, monkeypatch, "scontrol",
              f'echo "$*" >> {calls}\n[ "$1 $2 $3" = "show job -o" ] || exit 2\n{answer}')  # fmt: skip
    return calls


class FakeJob:
    """What the launcher reads of a submitit job: its id, its files, and `results()` as submitit
    gives them (the result pickle's value, or a FailedJobError with the job's trace)."""

    def __init__(self, folder: Path, job_id: str) -> None:
        self.job_id, self.paths = job_id, JobPaths(folder, job_id)
        folder.mkdir(parents=True, exist_ok=True)

    def finish(self, outcome: str, value) -> None:
        cloudpickle_dump((outcome, value), self.paths.result_pickle)  # what the node writes

    def results(self) -> list:
        outcome, value = pickle.loads(self.paths.result_pickle.read_bytes())
        if outcome == "error":
            raise FailedJobError(f"Job (task=0) failed during processing with trace:\n"
                                 f"----------------------\n{value}\n----------------------\n"
                                 f"You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'"
                                 f"or at paths:\n  - {self.paths.stderr}\n  - {self.paths.stdout}")  # fmt: skip
        return [value]


def job_return(status: JobStatus, value) -> JobReturn:
    ret = JobReturn(overrides=["training.seed=1"])
    ret.status, ret.return_value = status, value
    return ret


@pytest.fixture
def fast_polls(monkeypatch):
    monkeypatch.setattr(plugin, "POLL_S", 0.01)
    monkeypatch.setattr(plugin, "RESULT_GRACE_S", 0.0)


def rows(sweep: Path) -> dict[int, dict]:
    return {r["job"]: r for r in map(json.loads, (sweep / JOBS).read_text().splitlines())}


def test_our_launch_mirrors_the_pinned_stock_one():
    assert metadata.version("hydra-submitit-launcher") == "1.4.0rc3"
    source = inspect.getsource(stock.BaseSubmititLauncher.launch)
    sha256 = hashlib.sha256(source.encode()).hexdigest()[:16]
    assert sha256 == plugin.OrchardSlurmLauncher.STOCK_LAUNCH_SHA256, (
        "hydra-submitit-launcher's BaseSubmititLauncher.launch changed: re-diff our copy, "
        "OrchardSlurmLauncher.launch in orchard_app/cluster/plugin.py, against the new stock one, "
        "carry over what changed, then record the new hash in its STOCK_LAUNCH_SHA256"
    )


def test_scontrol_gives_a_jobs_state_and_reason(tmp_path, monkeypatch):
    calls = fake_scontrol(tmp_path, monkeypatch, "TIMEOUT", "TimeLimit")
    assert job_state("4241_1") == ("TIMEOUT", "TimeLimit")
    assert calls.read_text() == "show job -o 4241_1\n"


def test_scontrol_says_unknown_for_a_job_it_forgot_or_when_it_is_missing(tmp_path, monkeypatch):
    fake_scontrol(tmp_path, monkeypatch)
    assert job_state("4241_1") == ("UNKNOWN", INVALID_ID)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    state, why = job_state("4241_1")
    assert state == "UNKNOWN" and why.startswith("scontrol failed: ") and "scontrol" in why[16:]


def test_results_come_back_and_a_job_that_timed_out_without_one_is_reported(
    tmp_path, monkeypatch, fast_polls, caplog
):
    calls = fake_scontrol(tmp_path, monkeypatch, "TIMEOUT", "TimeLimit")
    sweep = tmp_path / "sweep"
    (sweep / "3_npz_mini_cnn").mkdir(parents=True)
    done, lost = FakeJob(sweep / ".submitit", "4241_0"), FakeJob(sweep / ".submitit", "4241_1")
    done.finish("success", job_return(JobStatus.COMPLETED, 0.75))
    with caplog.at_level(logging.ERROR, "orchard_app.cluster"):
        first, second = plugin._collect([done, lost], sweep, first_num=2)
    assert (first.status, first.return_value) == (JobStatus.COMPLETED, 0.75)
    assert second.status == JobStatus.COMPLETED and math.isnan(second.return_value)
    error = "SLURM job 4241_1 ended TIMEOUT (TimeLimit) without a result"
    assert rows(sweep) == {3: {"job": 3, "outcome": "timeout", "value": None, "error": error,
                               "run_dir": str(sweep / "3_npz_mini_cnn"), "log": str(lost.paths.stderr)}}  # fmt: skip
    assert caplog.messages == [f"job #3: {error}; log: {lost.paths.stderr}"]
    assert set(calls.read_text().splitlines()) == {"show job -o 4241_1"}  # a result needs no poll


def test_a_job_slurm_no_longer_knows_is_reported_as_failed(tmp_path, monkeypatch, fast_polls):
    fake_scontrol(tmp_path, monkeypatch)
    sweep = tmp_path / "sweep"
    (ret,) = plugin._collect([FakeJob(sweep / ".submitit", "77_0")], sweep, first_num=0)
    assert math.isnan(ret.return_value)
    (row,) = rows(sweep).values()
    assert row["outcome"] == "failed" and row["run_dir"] is None
    assert row["error"] == f"SLURM job 77_0 ended UNKNOWN ({INVALID_ID}) without a result"


def test_a_result_landing_soon_after_the_job_ended_is_waited_for(tmp_path, monkeypatch):
    monkeypatch.setattr(plugin, "POLL_S", 0.02)
    fake_scontrol(tmp_path, monkeypatch, "COMPLETED", "None")
    sweep = tmp_path / "sweep"
    job = FakeJob(sweep / ".submitit", "5_0")
    late = threading.Timer(0.3, job.finish, ("success", job_return(JobStatus.COMPLETED, 0.5)))
    late.start()
    try:
        (ret,) = plugin._collect([job], sweep, first_num=0)
    finally:
        late.join()
    assert ret.return_value == 0.5 and not (sweep / JOBS).exists()


@pytest.mark.parametrize(
    ("value", "outcome", "error"),
    [
        (job_return(JobStatus.FAILED, ValueError("bad\ntraining.label_smoothing=1.5")), "failed",
         "ValueError: training.label_smoothing=1.5"),
        (job_return(JobStatus.FAILED, UncompletedJobError(
            "Job not requeued because: timed-out too many times.")), "timeout",
         "UncompletedJobError: Job not requeued because: timed-out too many times. "
         "(hydra.launcher.max_num_timeout requeues were used up)"),
    ],
)  # fmt: skip
def test_a_job_that_failed_is_a_row_with_its_error_not_a_traceback(
    tmp_path, capsys, caplog, value, outcome, error
):
    sweep = tmp_path / "sweep"
    job = FakeJob(sweep / ".submitit", "9_0")
    job.finish("success", value)  # hydra's run_job caught the job's exception
    with caplog.at_level(logging.ERROR, "orchard_app.cluster"):
        ret = plugin._result(job, sweep, 0)
    assert ret.status == JobStatus.COMPLETED and math.isnan(ret.return_value)
    assert rows(sweep)[0]["outcome"] == outcome and rows(sweep)[0]["error"] == error
    assert caplog.messages == [f"job #0: {error}; log: {job.paths.stderr}"]
    assert capsys.readouterr().err == "" and "Traceback" not in caplog.text  # ours, said once


def test_an_error_submitit_pickled_itself_is_a_row_with_the_jobs_last_line(tmp_path):
    sweep = tmp_path / "sweep"
    job = FakeJob(sweep / ".submitit", "9_0")
    trace = 'Traceback (most recent call last):\n  File "x.py"\n{}\n'
    job.finish("error", trace.format("KeyError: 'hydra'"))
    plugin._result(job, sweep, 0)
    assert rows(sweep)[0]["outcome"] == "failed"
    assert rows(sweep)[0]["error"] == "FailedJobError: KeyError: 'hydra'"  # not the log's path
    job.finish("error", trace.format("UncompletedJobError: Job not requeued because: timed-out."))
    plugin._result(job, sweep, 0)
    assert rows(sweep)[0]["outcome"] == "timeout"


def test_a_batch_is_submitted_as_one_job_array_and_its_lost_tasks_reported(
    tmp_path, monkeypatch, fast_polls, caplog
):
    """Our copy of the stock launch, up to sbatch (a fake one that keeps the script it was given)."""
    fake_scontrol(tmp_path, monkeypatch, "CANCELLED", "None")
    fake_tool(tmp_path, monkeypatch, "sbatch",
              f'cp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4241"')  # fmt: skip
    fake_tool(tmp_path, monkeypatch, "srun", "exit 1")  # (submitit looks for it; never run here)
    sweep = tmp_path / "sweep"
    conf = SlurmQueueConf(submitit_folder=f"{sweep}/.submitit/%j", name="orchard", mem_gb=1, partition="debug",
                          array_parallelism=8, max_num_timeout=0, additional_parameters={"qos": "high"})  # fmt: skip
    params = OmegaConf.to_container(OmegaConf.structured(conf))
    del params["_target_"]
    launcher = plugin.OrchardSlurmLauncher(**params)
    hydra = {"sweep": {"dir": str(sweep), "subdir": "${hydra.job.num}", "mode": "770"}}
    launcher.setup(
        hydra_context=None, task_function=None, config=OmegaConf.create({"hydra": hydra})
    )
    with caplog.at_level(logging.INFO, "orchard_app.cluster"):
        returns = launcher.launch([["training.seed=1"], ["training.seed=2"]], initial_job_idx=0)
    assert [math.isnan(r.return_value) for r in returns] == [True, True]
    submitted = (tmp_path / "submitted.sh").read_text()
    for flag in (
        "--array=0-1%2",
        "--job-name=orchard",
        "--partition=debug",
        "--mem=1GB",
        "--qos=high",
    ):
        assert f"#SBATCH {flag}\n" in submitted, submitted
    assert (sweep.stat().st_mode & 0o777) == 0o770  # ++hydra.sweep.mode, as the stock launch does
    assert [(r["outcome"], r["error"]) for r in rows(sweep).values()] == [
        ("cancelled", f"SLURM job 4241_{i} was cancelled (scancel)") for i in (0, 1)
    ]
    assert "submitted job array 4241 (2 tasks)" in caplog.messages


def test_a_one_job_sweep_on_the_local_launcher(tiny_npz, tmp_path):
    sweep = tmp_path / "sweep"
    done = run_cli("-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", *tiny_overrides(tiny_npz),
                   cwd=tmp_path, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    (row,) = rows(sweep).values()
    assert row["outcome"] == "completed" and (Path(row["run_dir"]) / METRICS).is_file()
    assert Path(row["run_dir"]).parent == sweep and Path(row["log"]).is_file()
    assert "1 job(s): 1 completed" in done.stderr
