"""What a run needs to be found and reproduced months later: provenance.json and requirements.txt.

provenance.json is rewritten at every status change (running -> completed / failed /
interrupted), atomically, so it is current even when the run dies of an exception or a signal.
The package list comes from importlib.metadata (milliseconds), not a `pip freeze` subprocess.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

KEY_PACKAGES = (
    "orchard_app", "torch", "torchvision", "timm", "numpy", "hydra-core", "omegaconf", "hydra-optuna-sweeper",
    "hydra-submitit-launcher", "optuna", "submitit", "medmnist", "scikit-learn", "mlflow", "onnx", "onnxruntime",
)  # fmt: skip
PROJECT_DIR = Path(__file__).resolve().parents[2]


def now() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


def git_state(directory: Path = PROJECT_DIR) -> dict[str, Any]:
    """Commit and dirty flag of the checkout holding the code; empty outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if commit.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
        return {"git_commit": commit.stdout.strip(), "git_dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {}


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


def requirements() -> str:
    pkgs = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            pkgs[name.lower()] = f"{name}=={dist.version}"
    return "\n".join(pkgs[k] for k in sorted(pkgs)) + "\n"


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith("orchard_app/__main__.py"):
        argv[0:1] = ["python", "-m", "orchard_app"]
    return shlex.join(argv)


class Provenance:
    def __init__(self, path: Path, fields: dict[str, Any]):
        self.path = path
        self.data: dict[str, Any] = {
            "status": "running",
            "started": now(),
            "finished": None,
            "command": command_line(),
            "cwd": os.getcwd(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **git_state(),
            **fields,
            "versions": versions(),
        }
        self.write()

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        self.write()

    def finish(self, status: str, error: str | None = None) -> None:
        self.data["versions"] = versions()  # torch/cuda are known by now
        self.update(status=status, finished=now(), **({"error": error} if error else {}))

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.path)
