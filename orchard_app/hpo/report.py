"""A study's artifacts in its sweep dir, rewritten after every batch (so they are current
during the sweep too): study.csv, top_trials.md, best_config.yaml and figures/*.png (the
figures at most once a minute during the study, and at its end)."""

from __future__ import annotations

import csv
import io
import logging
import math
import time
import warnings
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from orchard_app.atomic import atomic_write
from orchard_app.rundir import layout

log = logging.getLogger("orchard_app.hpo")

TOP = 5


FIGURES_EVERY_S = 60.0  # while the study runs; drawing them costs ~1 s, more than a trial may
_drawn: dict[Path, float] = {}  # sweep dir -> when its figures were last drawn (monotonic)


def write(study: optuna.Study, sweep_dir: Path, config, final: bool = True) -> None:
    """The study's artifacts; with `final=False` (as trials end) the figures are redrawn at most
    every FIGURES_EVERY_S seconds, so that they do not add to every trial's cost."""
    trials = study.get_trials(deepcopy=False)
    atomic_write(sweep_dir / layout.STUDY_CSV, study_csv(trials))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        return
    atomic_write(sweep_dir / layout.TOP_TRIALS, top_trials(study, complete, config))
    best_config(study.best_trial, sweep_dir, config, study.study_name)
    if final or time.monotonic() - _drawn.get(sweep_dir, -math.inf) >= FIGURES_EVERY_S:
        figures(study, sweep_dir / layout.FIGURES_DIR, str(config.training.monitor))
        _drawn[sweep_dir] = time.monotonic()


def study_csv(trials) -> str:
    names = sorted({k for t in trials for k in t.params})
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["number", "state", "value", *[f"params_{n}" for n in names], "duration_s",
                "epochs_run", "job_dir", "error"])  # fmt: skip
    for t in trials:
        duration = t.duration.total_seconds() if t.duration else None
        epochs = t.user_attrs.get("epochs_run", len(t.intermediate_values) or None)
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                    *[t.params.get(n, "") for n in names],
                    "" if duration is None else round(duration, 1), epochs or "",
                    t.user_attrs.get("job_dir", ""), t.user_attrs.get("error", "")])  # fmt: skip
    return out.getvalue()


def top_trials(study: optuna.Study, complete, config) -> str:
    reverse = study.direction.name == "MAXIMIZE"
    best = sorted(complete, key=lambda t: t.value, reverse=reverse)[:TOP]
    names = sorted({k for t in best for k in t.params})
    counts = {s.name.lower(): sum(1 for t in study.trials if t.state == s) for s in TrialState}
    lines = [
        f"# Study `{study.study_name}`: top {len(best)} trials",
        "",
        f"Objective: {config.training.monitor} ({study.direction.name.lower()}). Trials: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        + ".",
        "",
        "| trial | value | " + " | ".join(names) + " | job dir |",
        "|---" * (len(names) + 3) + "|",
    ]
    for t in best:
        cells = [str(t.params.get(n, "")) for n in names]
        lines.append(f"| {t.number} | {t.value:.4f} | " + " | ".join(cells)
                     + f" | {t.user_attrs.get('job_dir', '')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def best_config(best, sweep_dir: Path, config, study_name: str) -> None:
    """A complete primary config that re-runs the best trial:
    `python -m orchard_app --config-path <sweep dir> --config-name best_config`."""
    job_dir = best.user_attrs.get("job_dir")
    record = layout.saved_config(job_dir or "")
    if not job_dir or not record.is_file():
        return
    from orchard_app.config import CONF_DIR

    app = OmegaConf.load(CONF_DIR / "config.yaml")
    keep = [d for d in app.defaults if isinstance(d, str) and d in ("orchard_schema", "_self_")]
    keep += [
        d
        for d in app.defaults
        if not isinstance(d, str) and str(next(iter(d))).startswith("override hydra/")
    ]
    task = OmegaConf.load(record)
    out = OmegaConf.create({"defaults": keep})
    out = OmegaConf.merge(out, task, {"hydra": app.hydra})
    head = (f"# Best trial {best.number} of study '{study_name}' "
            f"({config.training.monitor} = {best.value:.6g}), from {job_dir}.\n"
            f"# Re-run: python -m orchard_app --config-path {sweep_dir} --config-name best_config\n")  # fmt: skip
    atomic_write(sweep_dir / layout.BEST_CONFIG, head + OmegaConf.to_yaml(out))


def figures(study: optuna.Study, out: Path, monitor: str) -> None:
    """Optimisation history, parameter importances, parallel coordinates and the per-epoch
    values (where pruned trials stopped), as PNG; a figure Optuna cannot draw yet is skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out.mkdir(exist_ok=True)
    plots = {"optimization_history": vis.plot_optimization_history,
             "param_importances": vis.plot_param_importances,
             "parallel_coordinate": vis.plot_parallel_coordinate,
             "intermediate_values": vis.plot_intermediate_values}  # fmt: skip
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning on every call
                ax = plot(study)
            first = ax.flat[0] if hasattr(ax, "flat") else ax
            if name == "intermediate_values":
                first.set_xlabel("epoch")
                first.set_ylabel(f"{monitor} (validation)")
            fig = first.figure
            fig.set_size_inches(8, 5)
            fig.tight_layout()
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=100)
            plt.close(fig)
            atomic_write(out / f"{name}.png", buffer.getvalue())
        except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as e:
            log.debug("figure %s skipped: %s", name, e)
