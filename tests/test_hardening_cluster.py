"""Issue 22 (round 2), as a user sees it: sbatch refusing a sweep, a sweep dir that cannot be
created or is in use by another sweep, a cancelled SLURM job (fake `sbatch` / `scontrol` first
on PATH, no cluster), DDP ranks that disagree at start-up."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, tiny_overrides
from test_cluster import FakeJob, fake_scontrol, fake_tool

from orchard_app.cluster import plugin
from orchard_app.run.job_record import read_rows
from orchard_app.rundir.layout import JOBS, PROVENANCE

SBATCH_ERRORS = {  # what sbatch really prints, and the setting our message points at
    "down": ("sbatch: error: Batch job submission failed: Unable to contact slurm controller "
             "(connect failure)", "whether the cluster is up"),
    "cpus": ("sbatch: error: CPU count per node can not be satisfied\nsbatch: error: Batch job "
             "submission failed: Requested node configuration is not available",
             "hydra.launcher.cpus_per_task (now 2)"),
    "partition": ("sbatch: error: Batch job submission failed: Invalid partition name specified",
                  "hydra.launcher.partition (now nope)"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SBATCH_ERRORS))
def test_an_sbatch_refusal_is_one_message_naming_the_setting(tiny_npz, tmp_path, monkeypatch, case):
    said, check = SBATCH_ERRORS[case]
    fake_tool(tmp_path, monkeypatch, "sbatch", f"cat >&2 <<'X'\n{said}\nX\nexit 1")
    fake_tool(tmp_path, monkeypatch, "srun", "exit 1")
    started = time.monotonic()
    done = run_cli("-m", "hydra/launcher=slurm", "hydra.launcher.partition=nope",
                   f"hydra.sweep.dir={tmp_path}/sweep", *tiny_overrides(tiny_npz), cwd=tmp_path,
                   env={"PATH": os.environ["PATH"]}, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert time.monotonic() - started < 60
    assert "Traceback" not in done.stdout + done.stderr
    assert "SLURM did not accept the jobs" in done.stderr
    assert said.splitlines()[-1] in done.stderr and f"Check {check}" in done.stderr
    assert done.stderr.count(said.splitlines()[-1]) == 1  # (submitit's own copy is not shown)


@pytest.mark.parametrize("launcher", ["basic", "local"])
def test_a_sweep_dir_that_cannot_be_created_is_one_message(tiny_npz, tmp_path, launcher):
    (tmp_path / "a_file").write_text("")
    sweep = tmp_path / "a_file" / "sub"  # NotADirectoryError, for root too
    done = run_cli("-m", f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}",
                   *tiny_overrides(tiny_npz), cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert f"hydra.sweep.dir={sweep}" in done.stderr and "Not a directory" in done.stderr


def test_a_second_sweep_on_a_busy_sweep_dir_is_refused_naming_the_first(tiny_npz, tmp_path):
    from orchard_app.rundir.lock import SweepLock

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / JOBS).write_text(json.dumps({"job": 0, "outcome": "completed", "value": 0.5}) + "\n")
    code = ("import sys,time; from orchard_app.rundir.lock import SweepLock; "
            "l=SweepLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(120)")  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(sweep)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout.readline().strip() == "held"
        before = sorted(p.name for p in sweep.iterdir())
        done = run_cli("-m", f"hydra.sweep.dir={sweep}", "training.seed=1,2",
                       *tiny_overrides(tiny_npz), cwd=tmp_path, timeout=120)  # fmt: skip
        assert done.returncode == 1, done.stderr[-3000:]
        assert "Traceback" not in done.stdout + done.stderr
        assert "sweep directory busy" in done.stderr
        assert f"PID {first.pid} on host {socket.gethostname()}" in done.stderr
        assert "hydra.sweep.dir=<new dir>" in done.stderr
        assert sorted(p.name for p in sweep.iterdir()) == before  # no job dir, study, or row
        assert len((sweep / JOBS).read_text().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    with SweepLock(sweep):  # the OS dropped the dead holder's lock: it blocks nobody
        assert json.loads((sweep / ".sweep.lock.json").read_text())["pid"] == os.getpid()


def test_a_cancelled_job_is_one_cancelled_row_never_reason_none(tmp_path, monkeypatch, caplog):
    fake_scontrol(tmp_path, monkeypatch, "CANCELLED", "None")
    monkeypatch.setattr(plugin, "RESULT_GRACE_S", 0.0)
    sweep = tmp_path / "sweep"
    (ret,) = plugin._collect([FakeJob(sweep / ".submitit", "4241_1")], sweep, first_num=1)
    assert math.isnan(ret.return_value)
    (row,) = read_rows((sweep / JOBS).read_text())
    assert row["outcome"] == "cancelled"
    assert row["error"] == "SLURM job 4241_1 was cancelled (scancel)"
    assert "(None)" not in (sweep / JOBS).read_text() and "4241_1" not in caplog.text  # said once


def test_the_same_sweep_again_in_its_sweep_dir_names_the_way_out(failing_sweep, shared_npz,
                                                                  tmp_path):  # fmt: skip
    import shutil

    (first,) = (failing_sweep[0] / "multirun").glob("*/*")
    sweep = tmp_path / "sweep"
    shutil.copytree(first, sweep)  # job #0 completed there, #1 was refused by its config
    done = run_cli("-m", f"hydra.sweep.dir={sweep}", *tiny_overrides(shared_npz),
                   "training.label_smoothing=0.1,1.5", cwd=tmp_path, timeout=120)  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    (row,) = [r for r in read_rows((sweep / JOBS).read_text())[2:] if r["job"] == 0]
    assert "already holds this job's run (status completed) from an earlier sweep" in row["error"]
    assert "plus training.resume=auto" in row["error"] and "new hydra.sweep.dir" in row["error"]
    assert "\n" not in row["error"]  # all of it in the summary table's one line
    assert "job #0 done" not in done.stderr  # the earlier sweep's jobs are not this one's progress


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_the_rerun_of_a_continued_run_names_its_run_dir(tiny_npz, tmp_path):
    run = tmp_path / "run"
    done = run_cli(f"hydra.run.dir={run}", *tiny_overrides(tiny_npz, "training.resume=auto"),
                   cwd=tmp_path, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rerun = json.loads((run / PROVENANCE).read_text())["rerun"]
    assert rerun.endswith(f"training.resume=auto hydra.run.dir={run.resolve()}")


def _rank(rank: int, npz: str, port: int, case: str, out: str) -> None:
    """One of 2 processes of a hardware=ddp run (torch.multiprocessing, gloo on CPU)."""
    from conftest import compose

    from orchard_app.errors import OrchardError
    from orchard_app.run.context import RunContext

    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    given = (
        [f"training.seed={rank}", f"training.batch_size={16 * (rank + 1)}"]
        if case == "differ"
        else []
    )
    if case == "silent":  # a peer that hangs: the collective's timeout, shortened
        import datetime

        from orchard_app.distributed import group

        group.TIMEOUT = datetime.timedelta(seconds=3)
    if case == "data":  # the same settings, but each rank's dataset.path holds another file
        from conftest import make_npz

        os.chdir(Path(out, str(rank)))
        npz = str(make_npz(Path("tiny.npz"), counts=(96 - 48 * rank, 32, 32)).name)
    cfg = compose(*tiny_overrides(Path(npz), "hardware=ddp", "hardware.device=cpu", *given))
    seen = {}
    try:
        with RunContext.create(cfg, Path(out)) as ctx:
            if case == "data":
                from orchard_app.run.assemble import assemble

                assemble(cfg, ctx)
            if rank == 1 and case == "kill":
                os._exit(0)  # a peer that dies
            if rank == 1 and case == "silent":
                time.sleep(8)
                os._exit(0)
            ctx.group.any(False)
    except OrchardError as e:
        seen = {"type": type(e).__name__, "text": str(e)}
    Path(out, f"{rank}.json").write_text(json.dumps(seen))


def _spawn(tiny_npz, tmp_path, case: str) -> list[dict]:
    import socket

    import torch.multiprocessing

    for rank in ("0", "1"):
        (tmp_path / rank).mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_rank, args=(str(tiny_npz), port, case, str(tmp_path)), nprocs=2)
    return [
        json.loads(p.read_text()) if p.exists() else None
        for p in (tmp_path / "0.json", tmp_path / "1.json")
    ]


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_ddp_ranks_with_different_settings_are_refused_naming_the_keys(tiny_npz, tmp_path):
    zero, one = _spawn(tiny_npz, tmp_path, "differ")
    assert zero["type"] == one["type"] == "ConfigError"
    assert "training.batch_size=16 / 32" in zero["text"] and "training.seed=0 / 1" in zero["text"]


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_ddp_ranks_reading_different_data_are_refused_naming_the_sizes(tiny_npz, tmp_path):
    zero, one = _spawn(tiny_npz, tmp_path, "data")
    assert zero["type"] == one["type"] == "ConfigError"
    assert "read different data" in zero["text"]
    assert "steps per epoch 6 / 3" in zero["text"] and "training samples 96 / 48" in zero["text"]


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_a_dead_ddp_peer_is_one_distributed_error_on_rank_0(tiny_npz, tmp_path):
    zero, one = _spawn(tiny_npz, tmp_path, "kill")
    assert one is None and zero["type"] == "DistributedError"
    assert "another process of this run stopped answering" in zero["text"]
    assert "\n" not in zero["text"]


@pytest.mark.slow
def test_a_silent_ddp_peer_times_out_as_one_distributed_error(tiny_npz, tmp_path):
    zero, one = _spawn(tiny_npz, tmp_path, "silent")
    assert one is None and zero["type"] == "DistributedError", zero
    assert "Timed out waiting 3000ms" in zero["text"]  # the timeout, before the peer left at 8 s
    assert (
        "another process of this run stopped answering" in zero["text"] and "\n" not in zero["text"]
    )


@pytest.mark.slow  # a CLI run of several seconds: the fast suite stays under 3 minutes
def test_hardware_ddp_in_one_process_says_so_once(tiny_npz, tmp_path):
    done = run_cli(*tiny_overrides(tiny_npz, "hardware=ddp", "hardware.device=cpu"),
                   f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    said = done.stdout + done.stderr
    assert said.count("hardware=ddp but this is one process: start it with torchrun") == 1


def test_a_ddp_config_refusal_is_printed_once(tiny_npz, tmp_path):
    from test_ddp import torchrun

    proc, ranks = torchrun(*tiny_overrides(tiny_npz, "hardware=ddp", "hardware.device=cpu",
                                           "training.batch_size=1"), cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0
    assert "training.batch_size=1" in ranks[0] and "invalid config" not in ranks[1]
    assert not any("Traceback" in r for r in ranks)
