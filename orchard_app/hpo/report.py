"""A study's artifacts in its sweep dir, rewritten as trials end (so they are current
during the sweep too): study.csv, top_trials.md, best_config.yaml and figures/*.png (the
figures at most once a minute during the study, and at its end); with tracking=mlflow, the
sweep's parent run shows the same (tracking.update_sweep_page)."""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import math
import shlex
import time
import warnings
from pathlib import Path

import optuna
from omegaconf import OmegaConf
from optuna.trial import TrialState

from orchard_app.atomic import atomic_write
from orchard_app.hpo.storage import retried
from orchard_app.rundir import layout
from orchard_app.sweep.console import spelled
from orchard_app.tracking import update_sweep_page

log = logging.getLogger("orchard_app.hpo")

TOP = 5


FIGURES_EVERY_S = 60.0  # while the study runs; drawing them costs ~1 s, more than a trial may
_drawn: dict[Path, float] = {}  # sweep dir -> when its figures were last drawn (monotonic)


def write(study: optuna.Study, sweep_dir: Path, config, final: bool = True) -> None:
    """The study's files, then its MLflow page (nothing unless tracking=mlflow)."""
    write_files(study, sweep_dir, config, final)
    update_sweep_page(config, sweep_dir, study=study)


def write_files(study: optuna.Study, sweep_dir: Path, config, final: bool = True) -> None:
    """With `final=False` (as trials end) the figures are redrawn at most every
    FIGURES_EVERY_S seconds, so that they do not add to every trial's cost."""
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
                "epochs_run", "job_dir", "error", "retry_of", "retried_as"])  # fmt: skip
    again = retried(trials)
    for t in trials:
        duration = t.duration.total_seconds() if t.duration else None
        epochs = t.user_attrs.get("epochs_run", len(t.intermediate_values) or None)
        error = t.user_attrs.get("error") or ""
        if t.number in again and not error:  # failed by Optuna's heartbeat check
            error = "lost: no heartbeat from its job within the grace period"
        history = t.system_attrs.get("retry_history") or [""]
        w.writerow([t.number, t.state.name, "" if t.value is None else t.value,
                    *[t.params.get(n, "") for n in names],
                    "" if duration is None else round(duration, 1), epochs or "",
                    t.user_attrs.get("job_dir", ""), error, history[-1],
                    again.get(t.number, "")])  # fmt: skip
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
    head = (f"# Best trial #{best.number} of study '{study_name}' "
            f"({config.training.monitor} = {best.value:.6g}), from {job_dir}.\n"
            f"# Re-run: {rerun_command(sweep_dir)}\n")  # fmt: skip
    atomic_write(sweep_dir / layout.BEST_CONFIG, head + OmegaConf.to_yaml(out))


def rerun_command(sweep_dir: Path) -> str:
    """The command that re-runs the best trial from best_config.yaml."""
    return shlex.join(["python", "-m", "orchard_app", "--config-path", str(sweep_dir),
                       "--config-name", Path(layout.BEST_CONFIG).stem])  # fmt: skip


FILES = {  # what each of the study's files holds, for the sweep's closing lines
    layout.STUDY_CSV: "every trial: state, value, parameters, epochs run, run dir, error",
    layout.TOP_TRIALS: f"the {TOP} best trials",
    layout.FIGURES_DIR: "optimisation history, parameter importances, parallel coordinates, "
    "per-epoch values",
    layout.BEST_CONFIG: "the best trial's complete config",
}


def closing(study: optuna.Study, sweep_dir: Path, monitor: str, dashboard: str) -> str:
    """The sweep's last lines: the best trial, where the study's files are and what they hold,
    the command that re-runs the best trial, and the dashboard command for the storage."""
    lines = []
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        lines.append(
            f"best trial #{best.number}: {monitor} {best.value:.4f} with {spelled(best.params)}"
        )
    lines.append(f"study '{study.study_name}', in {sweep_dir}/:")
    width = max(len(name) for name in FILES) + 2
    for name, what in FILES.items():
        if (sweep_dir / name).exists():
            shown = name + "/" if (sweep_dir / name).is_dir() else name
            lines.append(f"  {shown:<{width}}{what}")
    if (sweep_dir / layout.BEST_CONFIG).is_file():
        lines.append(f"re-run the best trial: {rerun_command(sweep_dir)}")
    missing = importlib.util.find_spec("optuna_dashboard") is None
    lines.append(f"dashboard{' (pip install optuna-dashboard)' if missing else ''}: {dashboard}")
    return "\n".join(lines)


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
