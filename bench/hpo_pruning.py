"""What median pruning buys: the same 12-trial `hpo=quick` study on BloodMNIST, with and
without pruning, same sampler seed, run one after the other as a user would run them.

Prints each study's wall time, trials pruned and best value, the wall-time ratio, and the
fixed cost per trial (a trial's time outside its epochs: job start, data and model set-up,
test evaluation, artifacts). Goal: pruning saves >= 30% of the wall time with a best value
within 1% of the unpruned study's.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, data_root

TRIALS, EPOCHS, SAMPLES = 12, 6, 2000


def study(sweep: Path, *extra: str) -> float:
    args = [sys.executable, "-m", "orchard_app", "-m", "hpo=quick", f"hydra.sweep.dir={sweep}",
            "dataset=bloodmnist", f"dataset.root={data_root()}", f"dataset.max_samples={SAMPLES}",
            f"training.epochs={EPOCHS}", f"hydra.sweeper.n_trials={TRIALS}", "evaluation.figures=false",
            "hardware.num_threads=2", *extra]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"study failed ({' '.join(extra)}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def summary(sweep: Path) -> dict:
    with open(sweep / "study.csv") as f:
        rows = list(csv.DictReader(f))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    overheads = []
    for r in rows:
        metrics = Path(r["job_dir"]) / "metrics.json"
        if r["duration_s"] and metrics.is_file():
            epochs = json.loads(metrics.read_text())["history"]
            overheads.append(float(r["duration_s"]) - sum(e["seconds"] for e in epochs))
    return {
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "best": max(float(r["value"]) for r in complete),
        "overhead": sum(overheads) / len(overheads) if overheads else float("nan"),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pruned_dir, plain_dir = Path(tmp) / "pruned", Path(tmp) / "plain"
        t_pruned = study(pruned_dir)
        t_plain = study(plain_dir, "hydra.sweeper.pruner=null")
        a, b = summary(pruned_dir), summary(plain_dir)
    print(f"bloodmnist, mini_cnn, {SAMPLES} training samples, {EPOCHS} epochs, {TRIALS} trials, "
          "TPE seed 42, 2 threads")  # fmt: skip
    print(f"{'':22s}{'median pruning':>16s}{'no pruning':>14s}")
    print(f"{'wall time (s)':22s}{t_pruned:16.1f}{t_plain:14.1f}")
    print(f"{'trials pruned':22s}{a['pruned']:16d}{b['pruned']:14d}")
    print(f"{'best val_accuracy':22s}{a['best']:16.4f}{b['best']:14.4f}")
    print(f"{'fixed cost/trial (s)':22s}{a['overhead']:16.1f}{b['overhead']:14.1f}")
    saved = 1 - t_pruned / t_plain
    gap = (b["best"] - a["best"]) / b["best"]
    print(
        f"wall-time ratio pruned/unpruned: {t_pruned / t_plain:.2f} (saves {saved:.0%}; goal >= 30%)"
    )
    print(f"best value gap: {gap:+.2%} of the unpruned best (goal within 1%)")


if __name__ == "__main__":
    main()
