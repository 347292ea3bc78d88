"""Shared fixtures: compose real configs, make tiny synthetic datasets, run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from orchard_app.config import compose  # noqa: F401  (the tests import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED_MEDMNIST = ROOT.parent / "shared" / "data" / "medmnist"
LOCAL_SLURM = ROOT.parent / "shared" / "slurm" / "local-slurm.sh"


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory, monkeypatch):
    """Keep tests away from ~/.medmnist and ~/.cache: data and caches live in temp dirs."""
    monkeypatch.setenv("ORCHARD_DATA_DIR", str(tmp_path_factory.mktemp("data")))
    monkeypatch.setenv("ORCHARD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def tiny_overrides(npz: Path, *extra: str) -> list[str]:
    """A run small enough for unit tests: tiny npz, mini_cnn, 1 epoch, no figures."""
    return ["dataset=npz", f"dataset.path={npz}", "model=mini_cnn", "training.epochs=1",
            "training.batch_size=16", "evaluation.figures=false", "hardware.num_threads=2", *extra]  # fmt: skip


def make_npz(
    path: Path,
    classes: int = 3,
    size: int = 28,
    channels: int = 1,
    counts: tuple[int, int, int] = (96, 32, 32),
    multilabel: bool = False,
    seed: int = 0,
) -> Path:
    """A learnable synthetic set: class k lights up horizontal band k (several bands if multi-label)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    band = size // classes
    for split, n in zip(("train", "val", "test"), counts, strict=True):
        if multilabel:
            y = (rng.random((n, classes)) < 0.4).astype(np.uint8)
            y[np.arange(n), rng.integers(0, classes, n)] = 1  # at least one positive per sample
        else:
            y = (np.arange(n) % classes).astype(np.uint8).reshape(-1, 1)
        x = rng.integers(0, 60, size=(n, size, size, channels), dtype=np.uint8)
        for i in range(n):
            for k in np.flatnonzero(y[i]) if multilabel else [int(y[i, 0])]:
                x[i, k * band : (k + 1) * band] += 150
        arrays[f"{split}_images"] = x[..., 0] if channels == 1 else x
        arrays[f"{split}_labels"] = y
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return make_npz(tmp_path / "tiny.npz")


@pytest.fixture
def shared_medmnist() -> Path:
    if not (SHARED_MEDMNIST / "bloodmnist.npz").is_file():
        pytest.skip(
            f"real MedMNIST files not found at {SHARED_MEDMNIST} (the workplace's shared data folder)"
        )
    return SHARED_MEDMNIST


@pytest.fixture(scope="session")
def cluster():
    """The workplace's one-node SLURM cluster, started if it is not running (and then stopped)."""
    if not LOCAL_SLURM.is_file():
        pytest.skip(f"the local SLURM cluster script is not at {LOCAL_SLURM}")
    was_up = subprocess.run([LOCAL_SLURM, "status"], capture_output=True).returncode == 0
    started = subprocess.run([LOCAL_SLURM, "start"], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=300)  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    if not was_up:
        subprocess.run([LOCAL_SLURM, "stop"], capture_output=True, stdin=subprocess.DEVNULL,
                       timeout=120)  # fmt: skip


def run_cli(
    *args: str, cwd: Path, env: dict | None = None, timeout: float = 300, python_args: tuple = ()
) -> subprocess.CompletedProcess:
    """`python -m orchard_app <args>` in `cwd`, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *python_args, "-m", "orchard_app", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def only_run_dir(base: Path) -> Path:
    """The single run directory under <base>/outputs/<date>/."""
    dirs = [p for p in (base / "outputs").glob("*/*") if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]
