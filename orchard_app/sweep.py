"""A `--multirun` sweep's own record and its closing summary.

Every job, whatever launcher ran it (in this process, another process, a SLURM node), appends
one line to `<sweep dir>/jobs.jsonl`: job number, outcome, value, the one-line reason of a
failure (or the epoch a pruned run stopped at) and the job's run dir. `SweepSummary` (a Hydra
callback, see conf/config.yaml) prints a line per row while the sweep runs, a table from it
when the sweep ends, and makes the exit code non-zero when a job failed. Light on purpose (no
torch; its helpers are imported when a multirun starts): Hydra imports it at every start.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

RECORD_NAME = "jobs.jsonl"


def sweep_dir_of_job() -> Path | None:
    """The sweep directory of the running multirun job (None for a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return None
    hc = HydraConfig.get()
    sweep_dir = Path(hc.runtime.output_dir)
    for _ in Path(str(hc.sweep.subdir)).parts:  # <sweep.dir>/<sweep.subdir>, never re-resolved
        sweep_dir = sweep_dir.parent
    return sweep_dir.resolve()


def record_job(
    outcome: str, value: float | None = None, error: str | None = None, epoch: int | None = None
) -> None:
    """Append this job's end to the sweep's jobs.jsonl (no-op outside a multirun)."""
    from hydra.core.hydra_config import HydraConfig

    from orchard_app.ranks import process_rank

    sweep_dir = sweep_dir_of_job()
    if sweep_dir is None or not process_rank().is_main:  # one row per job, not per process
        return
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    row = {"job": int(hc.job.num), "outcome": outcome, "value": value, "error": error,
           "run_dir": str(run_dir) if run_dir.exists() else None, "stopped_at_epoch": epoch,
           "overrides": list(hc.overrides.task)}  # fmt: skip
    if os.environ.get("SUBMITIT_EXECUTOR"):  # where this job's console output went
        with contextlib.suppress(Exception):
            import submitit

            row["log"] = str(submitit.JobEnvironment().paths.stderr)
    append_row(sweep_dir, row)


def append_row(sweep_dir: Path, row: dict[str, Any]) -> None:
    """One line of jobs.jsonl, under a lock (jobs of a sweep end at the same time)."""
    from filelock import FileLock

    sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(sweep_dir / f".{RECORD_NAME}.lock"), timeout=60)
    with lock, open(sweep_dir / RECORD_NAME, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The last record of each job, in job order."""
    jobs: dict[int, dict] = {}
    try:
        lines = (Path(sweep_dir) / RECORD_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        jobs[int(row["job"])] = row
    return [jobs[k] for k in sorted(jobs)]


def say(text: str) -> None:
    """One console line in the launcher's `[HH:MM:SS] text` style. Printed, not logged: while
    an in-process job runs, the root logger writes that job's own log files."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


class SweepSummary(Callback):
    """Around a --multirun, in the launcher process: point an Optuna sweeper the monitor's way
    (sweep_direction.py), route launcher warnings through one handler (sweep_logs.py), print a
    line per finished job while it runs and a table at its end (sweep_progress.py), and exit 1
    when a job failed. Hydra pickles callbacks to submitit's jobs: the live parts stay here."""

    def __init__(self) -> None:
        self._progress = None
        self._undo_logs = None
        self._refused = False

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_progress": None, "_undo_logs": None}

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from orchard_app.config.monitor import direction_of
        from orchard_app.sweep_direction import follow_monitor, is_optuna
        from orchard_app.sweep_logs import route_launcher_logs
        from orchard_app.sweep_progress import Progress, total_jobs

        try:
            follow_monitor(config)
        except SystemExit:
            self._refused = True
            raise
        self._undo_logs = route_launcher_logs(config)
        noun = "trial" if is_optuna(config.hydra.sweeper) else "job"
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._progress = Progress(sweep_dir, total_jobs(config), noun,
                                  str(config.training.monitor), direction_of(config)).start()  # fmt: skip

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        if self._progress is not None:  # a job of this process: its line comes at once
            self._progress.poll()

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if self._refused:
            return
        from orchard_app.config.monitor import direction_of
        from orchard_app.sweep_progress import mlflow_hint, summary_text

        progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()
        if self._undo_logs is not None:
            self._undo_logs()
            self._undo_logs = None
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        jobs = read_jobs(sweep_dir)
        if not jobs:
            return
        text = summary_text(sweep_dir, jobs, str(config.training.monitor), direction_of(config))
        if hint := mlflow_hint(jobs):
            text += "\n" + hint
        print("\n" + text, file=sys.stderr, flush=True)
        outcomes = {job["outcome"] for job in jobs}
        study = str(config.hydra.sweeper.get("_target_", "")).startswith("orchard_app.hpo.")
        if outcomes & {"failed", "timeout"} and "interrupted" not in outcomes and not study:
            raise SystemExit(1)  # (a study's failed trials are data; it ends on max_failure_rate)
