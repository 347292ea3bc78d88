"""What median pruning buys: the same `hpo=quick` study on BloodMNIST (24 trials; --trials to
change it), with and without pruning (`hpo/pruner=none`), same sampler seed, one after the other
as a user would.

Prints each study's wall time, trials pruned and best value, the wall-time ratio, and the
fixed cost per trial in-process (a trial's time outside its epochs, ask to tell: job config,
run dir, data and model set-up, and for a completed trial the test evaluation and artifacts;
a pruned trial skips those). Goals: pruning saves >= 45% of the wall time with a best value
within 1% of the unpruned study's; a trial's fixed cost <= 1 s.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import timed_study

EPOCHS, SAMPLES = 8, 2000


def study(sweep: Path, trials: int, *extra: str) -> float:
    return timed_study(sweep, f"dataset.max_samples={SAMPLES}", f"training.epochs={EPOCHS}",
                       f"hydra.sweeper.n_trials={trials}", "hardware.num_threads=2", *extra)  # fmt: skip


def summary(sweep: Path, wall: float) -> dict:
    """From the study itself: each trial's time outside its epochs (ask to tell: the job's
    config, run dir, data and model set-up, and for a completed trial its test evaluation and
    artifacts), for pruned and completed trials apart."""
    import optuna

    storage = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    trials = optuna.load_study(study_name=name, storage=storage).trials

    def fixed(state: str) -> float:
        costs = [t.duration.total_seconds() - t.user_attrs["epoch_seconds"] for t in trials
                 if t.state.name == state and "epoch_seconds" in t.user_attrs]  # fmt: skip
        return sum(costs) / len(costs) if costs else float("nan")

    epochs = sum(t.user_attrs.get("epoch_seconds", 0.0) for t in trials)
    return {
        "pruned": sum(t.state.name == "PRUNED" for t in trials),
        "best": max(t.value for t in trials if t.state.name == "COMPLETE"),
        "fixed_pruned": fixed("PRUNED"),
        "fixed_complete": fixed("COMPLETE"),
        "outside": (wall - epochs) / len(trials),  # process start, study artifacts too
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curves", type=Path, help="leave the unpruned study's curves there "
                        "(bloodmnist.json, for bench/hpo_warmup.py --curves)")  # fmt: skip
    parser.add_argument("--trials", type=int, default=24, help="trials per study (default 24)")
    parser.add_argument("overrides", nargs="*", help="for the pruned study only, e.g. "
                        "hpo.warmup=0.125 or hpo/pruner=hyperband")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pruned_dir, plain_dir = Path(tmp) / "pruned", Path(tmp) / "plain"
        t_pruned = study(pruned_dir, args.trials, *args.overrides)
        t_plain = study(plain_dir, args.trials, "hpo/pruner=none")
        a, b = summary(pruned_dir, t_pruned), summary(plain_dir, t_plain)
        if args.curves:
            from hpo_warmup import save_curves

            args.curves.mkdir(parents=True, exist_ok=True)
            save_curves(plain_dir, args.curves / "bloodmnist.json", t_plain)
    print(f"bloodmnist, mini_cnn, {SAMPLES} training samples, {EPOCHS} epochs, {args.trials} trials, "
          "TPE seed 42, 2 threads; hpo=quick's median pruner (3 start-up trials, warm-up "
          f"hpo.warmup 0.25 x {EPOCHS} epochs)"
          + (f"; the pruned study with {' '.join(args.overrides)}" if args.overrides else ""))  # fmt: skip
    print(f"{'':34s}{'pruning' if args.overrides else 'median pruning':>16s}{'no pruning':>14s}")
    print(f"{'wall time (s)':34s}{t_pruned:16.1f}{t_plain:14.1f}")
    print(f"{'trials pruned':34s}{a['pruned']:16d}{b['pruned']:14d}")
    print(f"{'best val_accuracy':34s}{a['best']:16.4f}{b['best']:14.4f}")
    print(f"{'fixed cost/pruned trial (s)':34s}{a['fixed_pruned']:16.2f}{'-':>14s}")
    print(
        f"{'fixed cost/completed trial (s)':34s}{a['fixed_complete']:16.2f}{b['fixed_complete']:14.2f}"
    )
    print(f"{'wall time outside epochs/trial (s)':34s}{a['outside']:16.2f}{b['outside']:14.2f}")
    saved = 1 - t_pruned / t_plain
    gap = (b["best"] - a["best"]) / b["best"]
    print(
        f"wall-time ratio pruned/unpruned: {t_pruned / t_plain:.2f} (saves {saved:.0%}; goal >= 45%)"
    )
    print(f"best value gap: {gap:+.2%} of the unpruned best (goal within 1%)")
    print("fixed cost per trial, in-process (ask to tell, outside the epochs): goal <= 1 s")


if __name__ == "__main__":
    main()
