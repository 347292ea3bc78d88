"""Does a pruning rule spare the eventual best? Full validation curves, replayed offline.

For each real set (BreastMNIST, BloodMNIST capped), one unpruned `hpo=quick` study records every
trial's per-epoch validation value (optuna.db); its best trial is the one the study would pick.
Each pruning rule is then replayed on those curves with Optuna's own pruner objects: trials are
told to a fresh in-memory study in order, epoch by epoch, and stop where `should_prune()` says
so. The order is shuffled (SHUFFLES times, seeded) because a pruner's verdict depends on which
trials came first; the parameters stay those the unpruned study drew (with pruning, TPE would
have seen other histories, which this replay cannot show).

Prints, per set and rule: how often the pruner stops every trial that reached the study's best
value ("best lost": the pruned study cannot find it), the best value the
pruned study keeps (mean over orders, as a fraction of the unpruned best) and the share of
epochs it saves. Collecting the curves trains every trial to its end once (cached in --curves);
the replay itself takes seconds.

    python bench/hpo_warmup.py --curves /tmp/curves
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import time
import warnings
from pathlib import Path

from common import ROOT, data_root

SETS = {  # name: (overrides, trials): hpo=quick's own budget on BreastMNIST, and the study of
    # bench/hpo_pruning.py on BloodMNIST (`hpo_pruning.py --curves DIR` leaves its curves there)
    "breastmnist": (["dataset=breastmnist", "training.epochs=20"], 12),
    "bloodmnist": (["dataset=bloodmnist", "dataset.max_samples=2000", "training.epochs=8"], 12),
}
SHUFFLES = 200
STARTUP = 3  # the presets' completed trials before any pruning


def rules(epochs: int) -> dict:
    import optuna.pruners as p

    def warm(fraction: float) -> int:
        return math.ceil(fraction * epochs)

    out = {"median, warm-up 2 epochs (old)": lambda: p.MedianPruner(STARTUP, 2)}
    for f in (0.25, 0.5):
        out[f"median, warm-up {f:.2f} x epochs"] = lambda f=f: p.MedianPruner(STARTUP, warm(f))
    out["percentile 75, warm-up 0.25 x epochs"] = lambda: p.PercentilePruner(
        75.0, STARTUP, warm(0.25)
    )
    out["hyperband, min 0.25 x epochs"] = lambda: p.HyperbandPruner(warm(0.25), epochs, 3)
    return out


def collect(name: str, out: Path) -> Path:
    """One unpruned study; its curves as JSON: [{number, value, curve: [v per epoch]}]."""
    target = out / f"{name}.json"
    if target.is_file():
        return target
    overrides, trials = SETS[name]
    sweep = out / name
    args = [sys.executable, "-m", "orchard_app", "-m", "hpo=quick", f"hydra.sweep.dir={sweep}",
            f"dataset.root={data_root()}", *overrides, f"hydra.sweeper.n_trials={trials}",
            "hydra.sweeper.pruner=null", "evaluation.figures=false", "hardware.num_threads=1"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{name}: study failed:\n{done.stderr[-3000:]}")
    save_curves(sweep, target, time.perf_counter() - started)
    return target


def save_curves(sweep: Path, target: Path, seconds: float) -> None:
    """The completed trials' per-epoch values of the study in `sweep`, as JSON."""
    import optuna

    storage = f"sqlite:///{sweep / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(storage)
    study = optuna.load_study(study_name=name, storage=storage)
    rows = [{"number": t.number, "value": t.value,
             "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)]}
            for t in study.trials if t.state.name == "COMPLETE"]  # fmt: skip
    target.write_text(json.dumps({"seconds": seconds, "trials": rows}))


def replay(trials: list[dict], make_pruner, order: list[int]) -> tuple[set[int], float, int]:
    """(numbers pruned, best value kept, epochs run) when the trials come in `order`."""
    import optuna

    study = optuna.create_study(direction="maximize", pruner=make_pruner())
    pruned, kept, epochs = set(), -math.inf, 0
    for i in order:
        t, trial = trials[i], study.ask()
        for step, value in enumerate(t["curve"], start=1):
            trial.report(value, step)
            epochs += 1
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                pruned.add(t["number"])
                break
        else:
            study.tell(trial, max(t["curve"]))
            kept = max(kept, max(t["curve"]))
    return pruned, kept, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curves", type=Path, required=True, help="where the curves are cached")
    parser.add_argument("--collect-only", choices=SETS, help="collect one set's curves, no replay")
    args = parser.parse_args()
    args.curves.mkdir(parents=True, exist_ok=True)
    if args.collect_only:
        collect(args.collect_only, args.curves)
        return
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    for name in SETS:
        data = json.loads(collect(name, args.curves).read_text())
        trials = data["trials"]
        epochs = len(trials[0]["curve"])
        best_value = max(t["value"] for t in trials)
        best = {t["number"] for t in trials if t["value"] == best_value}
        full = sum(len(t["curve"]) for t in trials)
        print(f"\n{name}: {len(trials)} trials x {epochs} epochs, unpruned best val_accuracy "
              f"{best_value:.4f} (trial {sorted(best)}); curves took {data['seconds']:.0f} s; "
              f"{SHUFFLES} orders")  # fmt: skip
        print(f"{'rule':40s}{'best lost':>12s}{'kept best/best':>16s}{'epochs saved':>14s}")
        rng = random.Random(0)
        orders = [rng.sample(range(len(trials)), len(trials)) for _ in range(SHUFFLES)]
        for label, make in rules(epochs).items():
            hit, kept, run = 0, 0.0, 0
            for order in orders:
                pruned, value, ran = replay(trials, make, order)
                hit += best <= pruned  # every trial that reached the best value was pruned
                kept += value / best_value
                run += ran
            print(f"{label:40s}{hit / SHUFFLES:12.0%}{kept / SHUFFLES:16.4f}"
                  f"{1 - run / (full * SHUFFLES):14.0%}")  # fmt: skip


if __name__ == "__main__":
    main()
