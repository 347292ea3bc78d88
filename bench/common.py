"""Shared set-up for the benchmarks: find the real data, compose configs, time things."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from orchard_app.config import compose  # noqa: F401  (the benchmarks import it from here)

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "medmnist"


def data_root() -> Path:
    """../shared/data/medmnist if present, else $ORCHARD_DATA_DIR / ~/.medmnist."""
    if (SHARED / "bloodmnist.npz").is_file():
        return SHARED
    root = Path(os.environ.get("ORCHARD_DATA_DIR", "~/.medmnist")).expanduser()
    if not (root / "bloodmnist.npz").is_file():
        sys.exit(
            f"bloodmnist.npz not found in {SHARED} or {root}; set ORCHARD_DATA_DIR to its folder"
        )
    return root


def rate(fn: Callable[[], int], min_seconds: float = 3.0, max_calls: int | None = None) -> float:
    """Items per second of `fn` (which returns how many items it processed), after one warm-up call."""
    fn()
    done, calls, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds and (max_calls is None or calls < max_calls):
        done += fn()
        calls += 1
    return done / (time.perf_counter() - start)


def timed_study(sweep: Path, *args: str) -> float:
    """Wall seconds of `python -m orchard_app -m hpo=quick` on real BloodMNIST, its sweep dir
    left at `sweep`; a failing study ends the benchmark with its console's last lines.

    Every study of a benchmark runs at the same path (`sweep`'s folder / "study"), moved to
    `sweep` once it ends: a seeded sampler mixes the sweep dir into its seed (so that a second
    study on the same storage draws new values), and the same path makes the compared studies
    draw the same parameters, not two different samples of the space."""
    place = sweep.parent / "study"
    command = [sys.executable, "-m", "orchard_app", "-m", "hpo=quick", f"hydra.sweep.dir={place}",
               "dataset=bloodmnist", f"dataset.root={data_root()}", "evaluation.figures=false",
               *args]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"study failed ({' '.join(args)}):\n{done.stderr[-3000:]}")
    place.rename(sweep)
    return seconds
