"""What a run needs to be found and reproduced months later: provenance.json and requirements.txt.

provenance.json is rewritten at every status change (running -> completed / failed /
interrupted / pruned / requeued, see outcomes.py), atomically, so it is current even when the run dies of an exception or a signal
(SIGTERM/SIGINT become TrainingInterrupted). Only kill -9 leaves `running` behind: a `running`
run whose directory is not locked (lock.py) died that way.
The package list comes from importlib.metadata (milliseconds), not a `pip freeze` subprocess.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import hashlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from orchard_app.atomic import atomic_write
from orchard_app.errors import StorageError

KEY_PACKAGES = (
    "orchard_app", "torch", "torchvision", "timm", "numpy", "hydra-core", "omegaconf", "hydra-optuna-sweeper",
    "hydra-submitit-launcher", "optuna", "submitit", "medmnist", "scikit-learn", "mlflow", "onnx", "onnxruntime",
    "structlog", "filelock",
)  # fmt: skip
PROJECT_DIR = Path(__file__).resolve().parents[2]
SCHEDULER_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_NODELIST",
                 "SLURM_RESTART_COUNT", "SLURM_PROCID", "CUDA_VISIBLE_DEVICES")  # fmt: skip


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def git_state(directory: Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding the code; empty outside a git checkout.

    Only a checkout whose top level is `directory` counts: an installed copy that merely sits
    inside some other repository (a venv in a project) must not report that repository's commit.
    """
    directory = Path(directory or PROJECT_DIR)
    try:
        top = _git(directory, "rev-parse", "--show-toplevel")
        if top is None or Path(top).resolve() != directory.resolve():
            return {}
        commit = _git(directory, "rev-parse", "HEAD")
        status = _git(directory, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    if commit is None or status is None:
        return {}
    return {"git_commit": commit, "git_dirty": bool(status)}


def _git(directory: Path, *args: str) -> str | None:
    done = subprocess.run(
        ["git", "-C", str(directory), *args], capture_output=True, text=True, timeout=10
    )
    return done.stdout.strip() if done.returncode == 0 else None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    if "torch" in sys.modules:
        import torch

        out["cuda"] = torch.version.cuda
        out["cudnn"] = (
            str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None
        )
    return out


@functools.cache  # one process, one environment: a study's in-process trials list it once
def requirements() -> str:
    pkgs = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            pkgs[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(pkgs[k] for k in sorted(pkgs)) + "\n"


def command_line() -> str:
    """The command line of this process, as typed (`python -m orchard_app ...`)."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).parts[-2:] == ("orchard_app", "__main__.py"):
        argv[0:1] = ["python", "-m", "orchard_app"]
    elif argv and argv[0].endswith(".py"):  # a script, or another module run with -m
        argv.insert(0, "python")
    return shlex.join(argv)


def rerun_command() -> str | None:
    """The single-run command that repeats this run or sweep job: its own overrides, no sweep.

    Under a launcher such as submitit the process's own command line is the launcher's, so this
    is what reproduces a job; None outside a Hydra app.
    """
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    overrides = list(hc.overrides.task)
    if "training.resume=auto" in overrides:  # continued (resumed, requeued): in the same dir
        overrides.append(f"hydra.run.dir={Path(hc.runtime.output_dir).resolve()}")
    return shlex.join(["python", "-m", "orchard_app", *overrides])


def device_info(device) -> dict[str, Any]:
    """The torch device, its name for a GPU, and torch's CPU threads."""
    import torch

    info: dict[str, Any] = {"device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1),
        }
    return info


def _scheduler_env() -> dict[str, str]:
    """SLURM's job, array and restart ids, and under submitit the job's log files."""
    env = {k: v for k in SCHEDULER_ENV if (v := os.environ.get(k))}
    if os.environ.get("SUBMITIT_EXECUTOR"):
        with contextlib.suppress(Exception):  # only a record: never fail a run over it
            import submitit

            paths = submitit.JobEnvironment().paths
            env |= {"submitit_stdout": str(paths.stdout), "submitit_stderr": str(paths.stderr)}
    return env


class Provenance:
    """provenance.json of one run directory, rewritten atomically at every change.

    A run continued in the same directory (`training.resume=auto` after a requeue or a
    Ctrl-C) adds an attempt instead of overwriting the record: `attempts` lists each one's
    start, end, outcome and host; the top-level fields describe the latest.
    """

    def __init__(self, path: Path, fields: dict[str, Any], resumed_from: str | None = None,
                 continues: bool = False):  # fmt: skip
        self.path = path
        self._t0 = time.monotonic()
        previous = read_provenance(path) if continues else None
        attempt = {"attempt": 1, "started": now(), "finished": None, "outcome": "running",
                   "host": socket.gethostname(), "pid": os.getpid(), "command": command_line(),
                   **({"resumed_from": resumed_from} if resumed_from else {})}  # fmt: skip
        if env := _scheduler_env():
            attempt["env"] = env
        attempts = list((previous or {}).get("attempts") or [])
        attempt["attempt"] = len(attempts) + 1
        self.data: dict[str, Any] = {
            "status": "running",
            "started": (previous or {}).get("started") or attempt["started"],
            "finished": None,
            "command": attempt["command"],
            "rerun": rerun_command(),
            "cwd": os.getcwd(),
            "host": attempt["host"],
            "pid": attempt["pid"],
            "python_executable": sys.executable,
            "platform": platform.platform(),
            **git_state(),
            **fields,
            "versions": versions(),
            "attempts": [*attempts, attempt],
        }
        if env:
            self.data["env"] = env
        self.write()

    @property
    def attempt(self) -> dict[str, Any]:
        return self.data["attempts"][-1]

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, outcome: str, error: str | None = None, **extra: Any) -> None:
        self.data["versions"] = versions()  # torch/cuda are known by now
        finished = now()
        self.attempt.update(finished=finished, outcome=outcome, **extra,
                            **({"error": error} if error else {}))  # fmt: skip
        self.data.pop("error", None)
        self.update(
            status=outcome,
            finished=finished,
            duration_seconds=round(time.monotonic() - self._t0, 1),
            **extra,
            **({"error": error} if error else {}),
        )

    def write(self) -> None:
        write_record(self.path, _as_json(self.data))


def amend_outcome(path: Path, outcome: str, error: str) -> None:
    """Correct how the latest attempt ended, once a later step knows better (a job that asked to
    be requeued, with no requeue left, timed out)."""
    if (data := read_provenance(path)) and data.get("attempts"):
        data["attempts"][-1].update(outcome=outcome, error=error)
        data.update(status=outcome, error=error)
        write_record(path, _as_json(data))


def _as_json(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, default=str) + "\n"


def write_record(path: Path, text: str) -> None:
    """A record file of the run, atomically; a full disk or a read-only directory is one
    StorageError."""
    try:
        atomic_write(path, text)
    except OSError as e:
        raise StorageError(path, e) from None


BEST_DIGEST = "best_checkpoint_blake2b"  # of best.pt as the finished run left it (export checks it)


def file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def read_provenance(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
