"""Building the table: runs grouped by dataset and experiment, the latest run of a repeated
seed kept, each group's mean and sample standard deviation beside the paper's numbers, as
Markdown and CSV."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from orchard_app.atomic import atomic_write
from orchard_app.compare.runs import Run
from orchard_app.errors import CompareError
from orchard_app.rundir import layout
from orchard_app.rundir.logging import duration

PAPER_FILE = Path(__file__).with_name("medmnist_v2.json")


@cache
def paper() -> dict[str, Any]:
    """The paper's table (`medmnist_v2.json`): source, site and per-dataset values."""
    return json.loads(PAPER_FILE.read_text(encoding="utf-8"))


@dataclass
class Group:
    dataset: str
    experiment: str
    settings: str
    key: str
    runs: list[Run] = field(default_factory=list)
    dropped: list[Run] = field(default_factory=list)  # repeats of a seed (the latest is kept)

    @property
    def label(self) -> str:
        return f"{self.experiment} {self.settings}".strip()

    @property
    def seeds(self) -> list[int | None]:
        return [r.seed for r in self.runs]

    def stats(self, metric: str) -> tuple[float, float | None]:
        """(mean, sample standard deviation with ddof=1; None for a single run)."""
        values = [getattr(r, metric) for r in self.runs]
        return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None

    @property
    def seconds(self) -> float | None:
        times = [r.seconds for r in self.runs if r.seconds is not None]
        return statistics.fmean(times) if times else None


@dataclass
class Comparison:
    groups: list[Group]
    notes: list[str]  # jobs without results, repeated seeds, datasets the paper does not list

    def rows(self) -> list[dict[str, Any]]:
        """One row per (dataset, experiment): our numbers, the paper's and the differences."""
        table = paper()["datasets"]
        out = []
        for g in self.groups:
            acc, acc_sd = g.stats("accuracy")
            auc, auc_sd = g.stats("auc")
            ref = table.get(g.dataset)
            r18 = ref["resnet18_28"] if ref else None
            out.append({
                "dataset": g.dataset, "experiment": g.label, "seeds": len(g.runs),
                "seed_list": ",".join("?" if s is None else str(s) for s in g.seeds),
                "acc_mean": acc, "acc_std": acc_sd, "auc_mean": auc, "auc_std": auc_sd,
                "paper_r18_acc": r18["acc"] if r18 else None,
                "paper_r18_auc": r18["auc"] if r18 else None,
                "paper_best_acc": ref["best_acc"] if ref else None,
                "diff_acc_r18": acc - r18["acc"] if r18 else None,
                "diff_auc_r18": auc - r18["auc"] if r18 else None,
                "diff_acc_best": acc - ref["best_acc"] if ref else None,
                "seconds_per_run": g.seconds, "config": g.key[:6],
            })  # fmt: skip
        return out


def group_runs(runs: list[Run], notes: list[str] | None = None) -> Comparison:
    notes = list(notes or [])
    groups: dict[tuple[str, str], Group] = {}
    for run in runs:
        g = groups.setdefault(
            (run.dataset, run.key), Group(run.dataset, run.experiment, run.settings, run.key)
        )
        g.runs.append(run)
    for g in groups.values():
        by_seed: dict[Any, Run] = {}
        for run in sorted(g.runs, key=lambda r: (r.finished, str(r.path))):
            if run.seed is not None and run.seed in by_seed:
                g.dropped.append(by_seed[run.seed])
            by_seed[run.seed if run.seed is not None else id(run)] = run
        g.runs = sorted(by_seed.values(), key=lambda r: (r.seed is None, r.seed or 0, str(r.path)))
        if g.dropped:
            seeds = ",".join(sorted({str(r.seed) for r in g.dropped}))
            which = (f"not {g.dropped[0].path}" if len(g.dropped) == 1
                     else f"{len(g.dropped)} earlier runs left out")  # fmt: skip
            notes.append(f"{g.dataset} / {g.label}: seed {seeds} ran more than once; "
                         f"the latest run is used, {which}")  # fmt: skip
    table = paper()["datasets"]
    for name in sorted({g.dataset for g in groups.values()} - set(table)):
        notes.append(f"{name}: not in the MedMNIST v2 paper; its paper columns are empty")
    ordered = sorted(groups.values(), key=lambda g: (g.dataset, g.experiment, g.settings, g.key))
    _disambiguate(ordered)
    return Comparison(ordered, notes)


def _disambiguate(groups: list[Group]) -> None:
    """Two experiments with the same label (a config file edited between runs): add the hash."""
    seen: dict[tuple[str, str], int] = {}
    for g in groups:
        seen[(g.dataset, g.label)] = seen.get((g.dataset, g.label), 0) + 1
    for g in groups:
        if seen[(g.dataset, g.label)] > 1:
            g.settings = f"{g.settings} [config {g.key[:6]}]".strip()


CSV_FIELDS = ("dataset", "experiment", "seeds", "seed_list", "acc_mean", "acc_std", "auc_mean",
              "auc_std", "paper_r18_acc", "paper_r18_auc", "paper_best_acc", "diff_acc_r18",
              "diff_auc_r18", "diff_acc_best", "seconds_per_run", "config")  # fmt: skip


def _pm(mean: float, sd: float | None) -> str:
    return f"{mean:.3f} ± {sd:.3f}" if sd is not None else f"{mean:.3f} (1 seed)"


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def _duration(seconds: float | None) -> str:
    return "" if seconds is None else duration(seconds)


def to_markdown(comparison: Comparison) -> str:
    p = paper()
    head = ("| dataset | experiment | seeds | ACC (ours) | AUC (ours) | ACC ResNet-18 (28) | "
            "AUC ResNet-18 (28) | best ACC (paper) | ΔACC vs R18 | ΔAUC vs R18 | ΔACC vs best "
            "| wall time / run |")  # fmt: skip
    lines = [head, _rule(head)]
    for r in comparison.rows():
        lines.append(
            f"| {r['dataset']} | {r['experiment']} | {r['seeds']} ({r['seed_list']}) | "
            f"{_pm(r['acc_mean'], r['acc_std'])} | {_pm(r['auc_mean'], r['auc_std'])} | "
            f"{_num(r['paper_r18_acc'])} | {_num(r['paper_r18_auc'])} | "
            f"{_num(r['paper_best_acc'])} | {_num(r['diff_acc_r18'], True)} | "
            f"{_num(r['diff_auc_r18'], True)} | {_num(r['diff_acc_best'], True)} | "
            f"{_duration(r['seconds_per_run'])} |"
        )
    lines += [
        "",
        "Ours: mean ± sample standard deviation (ddof=1) over seeds of the test metrics of each "
        "run's best checkpoint; Δ = our mean minus the paper's value; wall time: mean per run, "
        "start-up and test included.",
        f"Paper: {p['source']}; {p['site']}.",
    ]
    if comparison.notes:
        lines += ["", "Notes:", *(f"- {n}" for n in comparison.notes)]
    return "\n".join(lines) + "\n"


def _rule(head: str) -> str:
    return "|" + "|".join(" --- " for _ in range(head.count("|") - 1)) + "|"


def to_csv(comparison: Comparison) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in comparison.rows():
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_FIELDS})
    return buf.getvalue()


def write(comparison: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """comparison.md and comparison.csv in `out_dir`, each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv_path = out_dir / layout.COMPARISON_MD, out_dir / layout.COMPARISON_CSV
    try:
        atomic_write(md, to_markdown(comparison))
        atomic_write(csv_path, to_csv(comparison))
    except OSError as e:
        raise CompareError(
            f"cannot write the comparison in {out_dir} ({e.strerror or e}). "
            "Pick a writable folder with --out."
        ) from None
    return md, csv_path
