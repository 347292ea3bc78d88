"""Reading runs: the run dirs (those with a metrics.json) given or found under sweep dirs, the
notes on jobs that left no results, and what `compare` needs of each run."""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from orchard_app.config.resolvers import MACHINE_KEYS, hash_container
from orchard_app.errors import CompareError
from orchard_app.run.job_record import read_jobs
from orchard_app.rundir import layout
from orchard_app.rundir.provenance import read_provenance

# Overrides that do not tell one experiment from another in a group's label: the dataset has
# its own column, the seed is what a group averages over, the preset has its own name, and the
# keys the config hash leaves out (MACHINE_KEYS: paths, tracking, resume, hpo, export) with
# their subkeys, as the group's key leaves them out too; Hydra's own settings likewise.
UNLABELLED = ("training.seed", "dataset", "experiment")  # these keys exactly
UNLABELLED_TREES = (*MACHINE_KEYS, "hydra")  # these keys and everything under them


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
        if path.is_file() and path.name == layout.METRICS:
            path = path.parent
        if (path / layout.METRICS).is_file():
            found[path.resolve()] = None
            continue
        runs = sorted(p.parent for p in path.rglob(layout.METRICS) if not _hidden(p, path))
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
    for record in sorted(top.rglob(layout.JOBS)):
        for row in read_jobs(record.parent):
            run_dir = row.get("run_dir")
            key = Path(run_dir).resolve() if run_dir else (record, row.get("job"))
            jobs[key] = row
    notes = []
    for provenance in sorted(top.rglob(layout.PROVENANCE)):
        run = provenance.parent
        if (run / layout.METRICS).is_file() or _hidden(provenance, top):
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
    record = read_provenance(provenance)
    return str(record.get("status") or "unknown") if isinstance(record, dict) else "unknown"


def _no_runs_message(given: str | Path, path: Path) -> str:
    if path.is_file():
        return (f"{given} is a file, not a run or sweep directory. Pass the directory that "
                "holds metrics.json (a run) or the runs (a sweep).")  # fmt: skip
    started = any(path.rglob(layout.JOBS)) or any(path.rglob(layout.PROVENANCE))
    return (
        f"{given} holds no finished run (no {layout.METRICS} in it or below it)"
        + ("; its runs have not finished or failed" if started else "")
        + ". Pass the sweep directory (multirun/<date>/<time>) or run directories "
        "(outputs/<date>/<run>) of runs that completed."
    )


def read_run(path: Path) -> Run:
    metrics = _json(path / layout.METRICS)
    try:
        test, dataset = metrics["test"], metrics["dataset"]["name"]
        accuracy, auc = float(test["accuracy"]), float(test["auc"])
    except (KeyError, TypeError, ValueError):
        raise CompareError(
            f"{path / layout.METRICS} lacks test accuracy/auc or the dataset name: not a metrics.json "
            "written by orchard_app. Leave that directory out."
        ) from None
    provenance = _json(path / layout.PROVENANCE, missing_ok=True)
    config = _yaml(path / layout.HYDRA_DIR / layout.HYDRA_CONFIG)
    hydra = _yaml(path / layout.HYDRA_DIR / layout.HYDRA_HYDRA)
    overrides = _yaml(path / layout.HYDRA_DIR / layout.HYDRA_OVERRIDES) or []
    seed = _select(config, "training.seed")
    # a run made by train(cfg, output_dir=...) has no .hydra/: its own config hash keys it
    key = seedless_hash(config) if config else str(provenance.get("config_hash") or path)
    choice = _select(hydra, "hydra.runtime.choices.experiment")
    seconds = provenance.get("duration_seconds")
    return Run(
        path=path, dataset=str(dataset), accuracy=accuracy, auc=auc,
        seed=int(seed) if isinstance(seed, int) else None, key=key,
        experiment=str(choice) if choice not in (None, "none") else "default", settings=_settings(overrides),
        seconds=float(seconds) if isinstance(seconds, int | float) else None,
        finished=str(provenance.get("finished") or ""),
    )  # fmt: skip


def seedless_hash(config: dict[str, Any]) -> str:
    """What identifies an experiment across seeds: the recorded config without training.seed
    and without the machine keys (the run's config hash minus the seed)."""
    training = config.get("training")
    if isinstance(training, dict):
        config = {**config, "training": {k: v for k, v in training.items() if k != "seed"}}
    return hash_container(config)


def _settings(overrides: list[str]) -> str:
    kept = []
    for o in overrides:
        key = str(o).split("=", 1)[0].lstrip("+~")
        tree = any(key == t or key.startswith(t + ".") for t in UNLABELLED_TREES)
        if not tree and key not in UNLABELLED:
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
        return copy.deepcopy(_parse(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError):
        return None


@functools.lru_cache(maxsize=256)
def _parse(text: str) -> Any:
    """Copies of one run (or the seeds of a sweep) share their files' text: parsed once, in C."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _select(node: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
