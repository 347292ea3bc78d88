"""What a sweep prints while it runs and when it ends: one line per finished job, a table.

Jobs may run in this process (basic launcher), in other processes or on other nodes
(submitit), so progress is read from where every job reports its end, the sweep's
jobs.jsonl: a daemon thread tails it and prints each new row as a line such as

    trial #2 pruned at epoch 3 | 3 of 20 ended | best so far 0.9120 (#1) | elapsed 12m, ETA 1h10m

("job" for sweepers other than Optuna); `#2` is the trial's number everywhere (its launch
line, its run dir `2_...`, the table, study.csv), `3 of 20` a count. The thread is started and stopped by the
`SweepSummary` callback; the final read happens at its stop, so no row is missed or printed
twice. No torch, no optuna: the launcher process stays light.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from orchard_app.outcomes import ENDED, Outcome
from orchard_app.run.job_record import read_rows
from orchard_app.rundir.layout import JOBS, PROVENANCE
from orchard_app.rundir.logging import duration
from orchard_app.sweep.console import say

POLL_S = 0.5


def total_jobs(config) -> int | None:
    """How many jobs the sweep will run: n_trials for Optuna, the number of combinations of
    the swept values for Hydra's basic sweeper, None when it cannot be known (the lines then
    count without a total and give no ETA)."""
    from orchard_app.sweep.direction import is_optuna

    sweeper = config.hydra.sweeper
    if is_optuna(sweeper):  # a grid sampler may stop before n_trials: unknown then
        grid = "GridSampler" in str(OmegaConf.select(sweeper, "sampler._target_", default=""))
        return None if grid else int(sweeper.n_trials)
    if not str(sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return None
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    try:
        overrides = OverridesParser.create().parse_overrides(
            params + list(config.hydra.overrides.task)
        )
        sizes = {o.get_key_element(): _values(o) for o in overrides}  # a key counts once
    except Exception:  # e.g. glob() needs the config repository: the total stays unknown
        return None
    return math.prod(sizes.values())


def _values(override) -> int:
    return len(list(override.sweep_string_iterator())) if override.is_sweep_override() else 1


def swept_keys(config) -> set[str]:
    """The keys a sweep varies (what its launch lines show): the sweeper's params and the
    command line's sweeps (`interval`, `choice`, `range`, `a,b`), less the keys the command line
    fixes (a fixed value narrows a preset's search)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    task = list(config.hydra.overrides.task)
    swept, fixed = set(), set()
    for arg in params + task:
        try:
            override = parser.parse_override(arg)
        except Exception:  # e.g. glob() needs the config repository: not shown, then
            continue
        if override.is_sweep_override():
            swept.add(override.key_or_group)
        elif arg in task:
            fixed.add(override.key_or_group)
    return swept - fixed


_closing: list[str] = []


def close_with(text: str) -> None:
    """Lines the sweep ends with, after its table (the study's files, the dashboard): printed by
    the SweepSummary callback, or at once where it is not running."""
    if _current:
        _closing.append(text)
    else:
        print("\n" + text, file=sys.stderr, flush=True)


def closing_lines() -> list[str]:
    lines, _closing[:] = _closing[:], []
    return lines


_current: list[Progress] = []


def release() -> None:
    """The study sweeper accepted the study: print what earlier sweeps recorded, and go on."""
    for progress in _current:
        progress.released.set()


class Progress:
    """`held`: print nothing until `release()` (a study that is refused prints no old rows).
    `replay`: print the rows already in jobs.jsonl first (a resumed study's trials so far);
    otherwise a sweep re-run in its old dir says only what this run does."""

    def __init__(self, sweep_dir: Path, total: int | None, noun: str, monitor: str, direction,
                 held: bool = False, replay: bool = True):  # fmt: skip
        self.released = threading.Event()
        if not held:
            self.released.set()
        self.sweep_dir, self.total, self.noun = Path(sweep_dir), total, noun
        self.monitor, self.direction = monitor, direction
        self.rows: dict[int, dict[str, Any]] = {}
        self.started = time.monotonic()
        self._offset = 0 if replay else _size(self.sweep_dir / JOBS)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Progress:
        self._thread = threading.Thread(target=self._tail, name="sweep-progress", daemon=True)
        self._thread.start()
        _current[:] = [self]
        return self

    def stop(self) -> None:
        """Stop the thread, then print what it has not printed yet."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        _current[:] = []
        if self.released.is_set():
            self.poll()

    def _tail(self) -> None:
        while not self._stop.wait(POLL_S):
            if self.released.is_set():
                self.poll()

    def poll(self) -> None:
        """Print a line for each row appended to jobs.jsonl since the last poll."""
        with self._lock:
            for row in self._new_rows():
                self.rows[int(row["job"])] = row
                say(self.line(row))

    def _new_rows(self) -> list[dict[str, Any]]:
        try:
            with open(self.sweep_dir / JOBS, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:  # no job has ended yet
            return []
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits
        self._offset += len(complete)
        return read_rows(complete.decode("utf-8", "replace"))

    # ------------------------------------------------------------------ the line
    def line(self, row: dict[str, Any]) -> str:
        ended = sum(r["outcome"] in ENDED for r in self.rows.values())
        count = f"{ended} of {self.total}" if self.total and ended <= self.total else str(ended)
        parts = [f"{self.noun} #{row['job']} {self.describe(row)}", f"{count} ended"]
        best = best_job(self.rows.values(), self.direction)
        if best is not None:
            parts.append(f"best so far {best['value']:.4f} (#{best['job']})")
        elapsed = time.monotonic() - self.started
        timing = f"elapsed {duration(elapsed)}"
        if self.total and 0 < ended < self.total:
            timing += f", ETA {duration(elapsed / ended * (self.total - ended))}"
        return " | ".join([*parts, timing])

    def describe(self, row: dict[str, Any]) -> str:
        outcome = row["outcome"]
        if outcome == Outcome.COMPLETED and _number(row.get("value")):
            return f"done, {self.monitor} {row['value']:.4f}"
        if outcome == Outcome.PRUNED and row.get("stopped_at_epoch") is not None:
            return f"pruned at epoch {row['stopped_at_epoch']}"
        if outcome == Outcome.REQUEUED:
            return "requeued (it resumes when the scheduler restarts it)"
        return outcome


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # no jobs.jsonl yet
        return 0


def best_job(rows, direction: str) -> dict[str, Any] | None:
    """The completed job with the best value by the monitor's direction ('max' or 'min'); of
    equal values, the first job."""
    done = [r for r in rows if r["outcome"] == Outcome.COMPLETED and _number(r.get("value"))]
    if not done:
        return None
    sign = -1 if direction == "max" else 1
    return min(done, key=lambda r: (sign * r["value"], int(r["job"])))


def summary_text(sweep_dir: Path, jobs: list[dict[str, Any]], monitor: str = "value",
                 direction: str = "max", noun: str = "job") -> str:  # fmt: skip
    """`sweep <dir>: N job(s): ...`, then a table: job (or trial), state, value, run dir."""
    counts: dict[str, int] = {}
    for job in jobs:
        counts[job["outcome"]] = counts.get(job["outcome"], 0) + 1
    head = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
    best = best_job(jobs, direction)
    if best is not None:
        head += f"; best {monitor} {best['value']:.4f} (#{best['job']})"
    width = max(len(monitor), 8)
    lines = [f"sweep {sweep_dir}: {len(jobs)} {noun}(s): {head}",
             f"  {noun:<5} {'state':<11} {monitor:>{width}}  run dir"]  # fmt: skip
    for job in jobs:
        value = f"{job['value']:.4f}" if _number(job.get("value")) else ""
        where = job.get("run_dir") or "(no run dir: the job never started)"
        lines.append(f"  #{job['job']:<4} {job['outcome']:<11} {value:>{width}}  {where}")
        if job.get("stopped_at_epoch") is not None:
            lines.append(f"        stopped at epoch {job['stopped_at_epoch']}")
        elif job.get("error"):
            lines.append(f"        {job['error']}")
        if job.get("log") and job["outcome"] not in (Outcome.COMPLETED, Outcome.PRUNED):
            lines.append(f"        log: {job['log']}")  # a submitit job's console output
    return "\n".join(lines)


def mlflow_hint(jobs: list[dict[str, Any]]) -> str | None:
    """`MLflow: <where to see the sweep>` when its jobs were tracked (from a job's provenance)."""
    from orchard_app.tracking.links import ui_hint

    for job in jobs:
        try:
            tracked = json.loads((Path(job["run_dir"]) / PROVENANCE).read_text())["tracking"]
            return "MLflow: " + ui_hint(tracked["mlflow_tracking_uri"],
                                        tracked["mlflow_experiment_id"])  # fmt: skip
        except (TypeError, OSError, ValueError, KeyError):
            continue
    return None


def _number(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
