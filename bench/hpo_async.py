"""What asynchronous slots buy: the same pruned 16-trial `hpo=quick` study on BloodMNIST on
`hydra/launcher=local` with 2 slots, in batches (`hydra.sweeper.asynchronous=false`: each
batch of 2 waits for its slower trial) and asynchronously (a trial starts the moment one
ends), run one after the other as a user would run them.

Prints each study's wall time, slot utilisation (the trials' busy time, ask to end, over
slots x wall time), trials pruned and best value, and the ratios. Goal: asynchronous
utilisation >= 0.9, wall time <= 0.8 of batched, best value within 1%.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

from common import timed_study

TRIALS, SLOTS = 16, 2


def study(sweep: Path, epochs: int, samples: int, *extra: str) -> float:
    return timed_study(sweep, "hydra/launcher=local", f"hydra.sweeper.n_jobs={SLOTS}",
                       f"dataset.max_samples={samples}", f"training.epochs={epochs}",
                       f"hydra.sweeper.n_trials={TRIALS}", "hardware.num_threads=1", *extra)  # fmt: skip


def summary(sweep: Path, wall: float) -> dict:
    with open(sweep / "study.csv") as f:
        rows = list(csv.DictReader(f))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    busy = sum(float(r["duration_s"]) for r in rows if r["duration_s"])
    return {
        "wall": wall,
        "use": busy / (SLOTS * wall),
        "pruned": sum(r["state"] == "PRUNED" for r in rows),
        "best": max(float(r["value"]) for r in complete),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20, help="a trial's epochs (default 20, "
                        "the preset's own training.epochs)")  # fmt: skip
    parser.add_argument("--samples", type=int, default=1000, help="training samples (default 1000)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        batch_dir, async_dir = Path(tmp) / "batched", Path(tmp) / "async"
        shape = (args.epochs, args.samples)
        b = summary(batch_dir, study(batch_dir, *shape, "hydra.sweeper.asynchronous=false"))
        a = summary(async_dir, study(async_dir, *shape))
    print(f"bloodmnist, mini_cnn, {args.samples} training samples, {args.epochs} epochs, {TRIALS} trials, "
          f"median pruning, TPE seed 42, hydra/launcher=local, {SLOTS} slots, 1 thread each")  # fmt: skip
    print(f"{'':22s}{'batched':>12s}{'asynchronous':>14s}")
    print(f"{'wall time (s)':22s}{b['wall']:12.1f}{a['wall']:14.1f}")
    print(f"{'slot utilisation':22s}{b['use']:12.2f}{a['use']:14.2f}")
    print(f"{'trials pruned':22s}{b['pruned']:12d}{a['pruned']:14d}")
    print(f"{'best val_accuracy':22s}{b['best']:12.4f}{a['best']:14.4f}")
    print(f"wall-time ratio asynchronous/batched: {a['wall'] / b['wall']:.2f} (goal <= 0.8)")
    print(f"asynchronous utilisation: {a['use']:.2f} (goal >= 0.9)")
    print(f"best value gap: {(b['best'] - a['best']) / b['best']:+.2%} of the batched best "
          "(goal within 1%)")  # fmt: skip


if __name__ == "__main__":
    main()
