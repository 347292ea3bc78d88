"""What a sweep's MLflow parent run shows: the study (or grid) as one page.

Built from the sweep's config (the launcher's, as in multirun.yaml) and the study's trials or
the grid's jobs; written to MLflow by mlflow_sweep.publish. Light (no mlflow, no optuna), so
it is tested on its own and names the parent run from the job side too:

- name: what the sweep is, `study <name> · <dataset> · <model> · hpo=<preset>` or
  `sweep <swept overrides> · <dataset> · <model>`;
- params: the search space (`space.<key>`) and the fixed overrides (`fixed.<key>`), the
  sampler, pruner, direction, monitor and n_trials (a grid: its swept values);
- metrics over trials (step = trial or job number): the value of each completed one and the
  best so far, so MLflow draws the study's progress; counts of completed / pruned / failed;
- files: study.csv, top_trials.md, best_config.yaml, figures/ (a grid: its summary table).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf

from orchard_app.rundir import layout
from orchard_app.tracking.names import safe

STUDY_FILES = (layout.STUDY_CSV, layout.TOP_TRIALS, layout.BEST_CONFIG, layout.FIGURES_DIR)
SUMMARY_TEXT = "sweep_summary.txt"
MACHINE_KEYS = ("tracking", "hardware")  # where it ran, not what was searched
STATES = {"COMPLETE": "completed", "PRUNED": "pruned", "FAIL": "failed"}  # Optuna's, ours


@dataclass
class Page:
    name: str
    params: dict[str, str] = field(default_factory=dict)
    series: dict[str, dict[int, float]] = field(default_factory=dict)  # metric -> step -> value
    counts: dict[str, int] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    texts: dict[str, str] = field(default_factory=dict)  # artifact name -> text


def study_page(config, study) -> Page:
    """The page of an Optuna study (`study`: optuna.Study) run by the orchard sweeper."""
    monitor = str(config.training.monitor)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rows = [(t.number, STATES.get(t.state.name), t.value) for t in trials]
    sweeper = config.hydra.sweeper
    params = {**_space_and_fixed(config, dict(sweeper.get("params") or {})),
              "sampler": _call(sweeper.get("sampler")), "pruner": _call(sweeper.get("pruner")),
              "direction": study.direction.name.lower(), "monitor": monitor,
              "n_trials": str(sweeper.get("n_trials"))}  # fmt: skip
    return Page(
        name=page_name(config, study.study_name),
        params=params,
        series=_progress(rows, "study", monitor, study.direction.name == "MAXIMIZE"),
        counts=_counts(rows, "study", "trials"),
        files=STUDY_FILES,
    )


def grid_page(config, jobs: list[dict[str, Any]], summary: str) -> Page:
    """The page of a plain --multirun (a grid of Hydra's basic sweeper): jobs.jsonl's rows."""
    from orchard_app.config.monitor import direction_of

    monitor = str(config.training.monitor)
    ended = {int(j["job"]): j for j in jobs if j["outcome"] != "requeued"}  # requeued: runs again
    rows = []
    for number in range(max(ended, default=-1) + 1):  # a job not ended yet holds the best back
        job = ended.get(number, {})
        rows.append((number, job.get("outcome"), job.get("value")))
    return Page(
        name=page_name(config),
        params={
            **_space_and_fixed(config, dict(config.hydra.sweeper.get("params") or {})),
            "monitor": monitor,
        },  # fmt: skip
        series=_progress(rows, "sweep", monitor, direction_of(config) == "max"),
        counts=_counts(rows, "sweep", "jobs"),
        texts={SUMMARY_TEXT: summary + "\n"},
    )


def page_name(config, study_name: str | None = None) -> str:
    """`study orchard · breastmnist · mini_cnn · hpo=quick`, `sweep training.seed=1,2 · npz ·
    mini_cnn`: what the sweep is, with the dataset, model and preset unless they are swept or
    the study's name already says them (`study breastmnist-mini_cnn-quick`)."""
    swept, _ = _split_overrides(config)
    space = dict(config.hydra.sweeper.get("params") or {})
    searched = set(swept) | set(space)
    parts = []
    for group in ("dataset", "model"):
        if not any(k == group or k.startswith(group + ".name") for k in searched):
            parts.append(str(OmegaConf.select(config, f"{group}.name", default="?")))
    if _is_study(config):
        name = study_name or config.hydra.sweeper.get("study_name")
        preset = OmegaConf.select(config, "hydra.runtime.choices.hpo", default=None)
        parts += [f"hpo={preset}"] if preset else []
        parts = [p for p in parts if not name or p.removeprefix("hpo=") not in name]
        return " · ".join([f"study {name}" if name else "study", *parts])
    shown = " ".join(f"{k}={v}" for k, v in swept.items()) or "(no swept values)"
    return " · ".join([f"sweep {shown}", *parts])


# ---------------------------------------------------------------------- pieces
def _is_study(config) -> bool:
    return str(config.hydra.sweeper.get("_target_", "")).startswith("orchard_app.hpo.")


def _split_overrides(config) -> tuple[dict[str, str], dict[str, str]]:
    """The command line's task overrides as ({swept key: values}, {fixed key: value}),
    leaving out machine settings (tracking, hardware)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept, fixed = {}, {}
    task = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
    for text in task:
        try:
            o = OverridesParser.create().parse_override(text)
        except Exception:  # not ours to judge here: Hydra composed it already
            continue
        key = o.get_key_element().lstrip("+~")
        if key.split(".")[0].split("/")[0] in MACHINE_KEYS:
            continue
        value = text.split("=", 1)[1] if "=" in text else ""
        (swept if o.is_sweep_override() else fixed)[key] = value
    return swept, fixed


def _space_and_fixed(config, preset_space: dict[str, Any]) -> dict[str, str]:
    """`space.<key>`: the preset's search space with the command line's searches, less the keys
    the command line fixes; `fixed.<key>`: the command line's fixed values."""
    swept, fixed = _split_overrides(config)
    space = {k: str(v) for k, v in preset_space.items() if k not in fixed} | swept
    return {**{f"space.{k}": v for k, v in sorted(space.items())},
            **{f"fixed.{k}": v for k, v in sorted(fixed.items())}}  # fmt: skip


def _call(node) -> str:
    """`MedianPruner(n_startup_trials=3, n_warmup_steps=2)` from a `_target_` config; none."""
    if node is None:
        return "none"
    data = node
    if OmegaConf.is_config(node):
        try:  # e.g. a warm-up that follows training.epochs, as the jobs resolve it
            data = OmegaConf.to_container(node, resolve=True)
        except Exception:  # (one that only a job can resolve: shown as written)
            data = OmegaConf.to_container(node, resolve=False)
    if not isinstance(data, dict):
        return str(data)
    name = str(data.get("_target_", "?")).rsplit(".", 1)[-1]
    args = ", ".join(f"{k}={v}" for k, v in data.items() if not k.startswith("_") and v is not None)
    return f"{name}({args})"


def _progress(rows, group: str, monitor: str, maximize: bool) -> dict[str, dict[int, float]]:
    """`<group>/<monitor>` of each completed trial and `<group>/best_<monitor>` so far, by trial
    number. The best is given for a trial only once every earlier trial has ended, so a value
    once logged never changes (trials of a batch end in any order)."""
    values, best, current = {}, {}, None
    for number, state, value in rows:
        if state is None:  # still running (or waiting): later trials wait for it
            break
        if state == "completed" and _finite(value):
            values[number] = float(value)
            if current is None or (value > current if maximize else value < current):
                current = float(value)
        if current is not None:
            best[number] = current
    values |= {n: float(v) for n, s, v in rows if s == "completed" and _finite(v)}
    return {f"{group}/{safe(monitor)}": values, f"{group}/best_{safe(monitor)}": best}


def _counts(rows, group: str, noun: str) -> dict[str, int]:
    counts = {f"{group}/{noun}_{s}": 0 for s in ("completed", "pruned", "failed")}
    for _, state, _ in rows:
        key = f"{group}/{noun}_{'failed' if state == 'timeout' else state}"
        if key in counts:
            counts[key] += 1
    return counts


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
