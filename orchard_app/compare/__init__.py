"""Compare finished runs with the MedMNIST v2 paper: `python -m orchard_app.compare <dirs>...`.

Finds the run directories (those with a `metrics.json`) under the sweep or run directories it
is given, groups them by dataset and experiment (the config without `training.seed` and the
machine keys, so the seeds of one experiment form one group and any other experiment, a
recipe, is compared the same way), and reports per group the mean and the sample standard
deviation (ddof=1) over seeds of test ACC and AUC, beside the paper's ResNet-18 (28) and its
best ACC (`medmnist_v2.json`, which names its source), the differences and the seed count.

Light on purpose: no torch, so it answers at once; it reads JSON and YAML files only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from orchard_app.atomic import atomic_write
from orchard_app.config.resolvers import experiment_view
from orchard_app.errors import CompareError

PAPER_FILE = Path(__file__).with_name("medmnist_v2.json")
METRICS = "metrics.json"
JOBS = "jobs.jsonl"
# Overrides that do not tell one experiment from another in a group's label (the dataset has
# its own column; the seed is what a group averages over; the rest locate things).
UNLABELLED = ("training.seed", "dataset", "dataset.root", "dataset.cache_dir", "dataset.download",
              "dataset.mirror", "training.resume", "experiment", "hydra.")  # fmt: skip


@cache
def paper() -> dict[str, Any]:
    """The paper's table (`medmnist_v2.json`): source, site and per-dataset values."""
    return json.loads(PAPER_FILE.read_text(encoding="utf-8"))


@dataclass
class Run:
    path: Path
    dataset: str
    accuracy: float
    auc: float
    seed: int | None
    key: str  # the experiment: config hash without seed and machine keys
    experiment: str  # experiment=<name> it was run with, or "default"
    settings: str  # the overrides that set it apart (seed, dataset and paths left out)
    seconds: float | None  # the run's wall time (provenance.json), start-up included
    finished: str  # when it finished (provenance.json), to keep the latest of a repeated seed


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


# ------------------------------------------------------------------ finding runs


def find_run_dirs(paths: list[str | Path]) -> tuple[list[Path], list[str]]:
    """Run dirs (with metrics.json) given or found under `paths`, and notes on the jobs of a
    sweep that left no results. A path that does not exist or holds no run is an error."""
    found: dict[Path, None] = {}
    notes: list[str] = []
    for given in paths:
        path = Path(given).expanduser()
        if not path.exists():
            raise CompareError(
                f"{given} does not exist. Pass sweep directories (multirun/<date>/<time>) or run "
                "directories (outputs/<date>/<run>)."
            )
        if path.is_file() and path.name == METRICS:
            path = path.parent
        if (path / METRICS).is_file():
            found[path.resolve()] = None
            continue
        runs = sorted(p.parent for p in path.rglob(METRICS) if not _hidden(p, path))
        notes += _unfinished_jobs(path)
        if not runs:
            raise CompareError(_no_runs_message(given, path))
        found.update((p.resolve(), None) for p in runs)
    return list(found), notes


def _hidden(p: Path, top: Path) -> bool:
    return any(part.startswith(".") for part in p.relative_to(top).parts[:-1])


def _unfinished_jobs(top: Path) -> list[str]:
    """Runs under `top` that have no metrics.json (failed, pruned, interrupted, still running),
    from their provenance.json and the sweep's jobs.jsonl (which also has the one-line reason,
    and the jobs that failed before they had a run dir)."""
    jobs = {}
    for record in sorted(top.rglob(JOBS)):
        for row in _read_jobs(record):
            run_dir = row.get("run_dir")
            key = Path(run_dir).resolve() if run_dir else (record, row.get("job"))
            jobs[key] = row
    notes = []
    for provenance in sorted(top.rglob("provenance.json")):
        run = provenance.parent
        if (run / METRICS).is_file() or _hidden(provenance, top):
            continue
        row = jobs.pop(run.resolve(), {})
        status = row.get("outcome") or _status(provenance)
        reason = f": {row['error']}" if row.get("error") else ""
        notes.append(f"{run.name}: {status}, no results{reason}")
    for row in jobs.values():
        run_dir = row.get("run_dir")
        if run_dir and Path(run_dir).is_dir():
            continue  # finished (or already noted above)
        what = " ".join(o for o in row.get("overrides") or [] if not o.startswith("hydra."))
        reason = f": {row['error']}" if row.get("error") else ""
        notes.append(f"job #{row.get('job')} ({what or 'no overrides'}) "
                     f"{row.get('outcome', 'ended')} without results{reason}")  # fmt: skip
    return notes


def _status(provenance: Path) -> str:
    try:
        return str(json.loads(provenance.read_text(encoding="utf-8")).get("status") or "unknown")
    except (OSError, ValueError, AttributeError):
        return "unknown"


def _read_jobs(path: Path) -> list[dict[str, Any]]:
    jobs: dict[int, dict] = {}  # the last record of each job
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            jobs[int(row["job"])] = row
        except (ValueError, KeyError, TypeError):
            continue
    return [jobs[k] for k in sorted(jobs)]


def _no_runs_message(given: str | Path, path: Path) -> str:
    if path.is_file():
        return (f"{given} is a file, not a run or sweep directory. Pass the directory that "
                "holds metrics.json (a run) or the runs (a sweep).")  # fmt: skip
    started = any(path.rglob(JOBS)) or any(path.rglob("provenance.json"))
    return (
        f"{given} holds no finished run (no {METRICS} in it or below it)"
        + ("; its runs have not finished or failed" if started else "")
        + ". Pass the sweep directory (multirun/<date>/<time>) or run directories "
        "(outputs/<date>/<run>) of runs that completed."
    )


# ------------------------------------------------------------------ reading runs


def read_run(path: Path) -> Run:
    metrics = _json(path / METRICS)
    try:
        test, dataset = metrics["test"], metrics["dataset"]["name"]
        accuracy, auc = float(test["accuracy"]), float(test["auc"])
    except (KeyError, TypeError, ValueError):
        raise CompareError(
            f"{path / METRICS} lacks test accuracy/auc or the dataset name: not a metrics.json "
            "written by orchard_app. Leave that directory out."
        ) from None
    provenance = _json(path / "provenance.json", missing_ok=True)
    config = _yaml(path / ".hydra" / "config.yaml")
    hydra = _yaml(path / ".hydra" / "hydra.yaml")
    overrides = _yaml(path / ".hydra" / "overrides.yaml") or []
    seed = _select(config, "training.seed")
    # a run made by train(cfg, output_dir=...) has no .hydra/: its own config hash keys it
    key = seedless_hash(config) if config else str(provenance.get("config_hash") or path)
    choice = _select(hydra, "hydra.runtime.choices.experiment")
    seconds = provenance.get("duration_seconds")
    return Run(
        path=path, dataset=str(dataset), accuracy=accuracy, auc=auc,
        seed=int(seed) if isinstance(seed, int) else None, key=key,
        experiment=str(choice) if choice else "default", settings=_settings(overrides),
        seconds=float(seconds) if isinstance(seconds, int | float) else None,
        finished=str(provenance.get("finished") or ""),
    )  # fmt: skip


def seedless_hash(config: dict[str, Any]) -> str:
    """What identifies an experiment across seeds: the recorded config without training.seed
    and without the machine keys (the run's config hash minus the seed)."""
    view = experiment_view(config)
    if isinstance(view.get("training"), dict):
        view["training"].pop("seed", None)
    blob = json.dumps(view, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _settings(overrides: list[str]) -> str:
    kept = []
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if not any(key == u or (u.endswith(".") and key.startswith(u)) for u in UNLABELLED):
            kept.append(str(o))
    return " ".join(sorted(kept))


def _json(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if missing_ok:
            return {}
        raise CompareError(f"{path} is missing. Leave that directory out.") from None
    except (OSError, ValueError) as e:
        raise CompareError(f"{path} cannot be read ({e}). Leave that directory out.") from None


def _yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def _select(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


# ------------------------------------------------------------------ grouping


def compare(paths: list[str | Path]) -> Comparison:
    """Find, read and group the runs under `paths`."""
    run_dirs, notes = find_run_dirs(paths)
    return group_runs([read_run(p) for p in run_dirs], notes)


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
        for old in g.dropped:
            notes.append(f"{g.dataset} / {g.label}: seed {old.seed} ran more than once; "
                         f"the latest run is used, not {old.path}")  # fmt: skip
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


# ------------------------------------------------------------------ rendering

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
    if seconds is None:
        return ""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


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
    md, csv_path = out_dir / "comparison.md", out_dir / "comparison.csv"
    try:
        atomic_write(md, to_markdown(comparison))
        atomic_write(csv_path, to_csv(comparison))
    except OSError as e:
        raise CompareError(
            f"cannot write the comparison in {out_dir} ({e.strerror or e}). "
            "Pick a writable folder with --out."
        ) from None
    return md, csv_path
