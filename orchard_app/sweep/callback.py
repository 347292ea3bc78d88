"""The `SweepSummary` Hydra callback around a `--multirun` (see conf/config.yaml).

It prints a line per finished job while the sweep runs and a table from the sweep's
jobs.jsonl (orchard_app.run.job_record) when it ends, and makes the exit code non-zero when a
job failed. Light on purpose (no torch; its helpers are imported when a multirun starts):
Hydra imports it at every start.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from orchard_app.outcomes import FAILURES, Outcome
from orchard_app.run.job_record import read_jobs


class SweepSummary(Callback):
    """Around a --multirun, in the launcher process: point an Optuna sweeper the monitor's way
    (direction.py), route launcher warnings through one handler (launcher_logs.py), print a
    line per finished job while it runs and a table at its end (progress.py), and exit 1
    when a job failed. The sweep dir is locked (rundir/lock.py) from start to end: one sweep
    per sweep dir. Hydra pickles callbacks to submitit's jobs: the live parts stay here."""

    def __init__(self) -> None:
        self._progress = None
        self._undo_logs = None
        self._lock = None
        self._refused = False
        self._sweep_config = None  # the launcher's config (a job's own differs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_progress": None, "_undo_logs": None, "_lock": None,
                "_sweep_config": None}  # fmt: skip

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from orchard_app.config.monitor import direction_of
        from orchard_app.sweep.direction import follow_monitor, is_optuna
        from orchard_app.sweep.launcher_logs import route_launcher_logs
        from orchard_app.sweep.progress import Progress, swept_keys, total_jobs

        try:
            follow_monitor(config)  # (first: resolving the sweep dir claims it)
            sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
            _create(sweep_dir, str(config.hydra.sweep.dir))
            self._lock = _lock(sweep_dir)
        except SystemExit:
            self._refused = True
            raise
        optuna = is_optuna(config.hydra.sweeper)
        noun = "trial" if optuna else "job"
        self._undo_logs = route_launcher_logs(config, swept_keys(config), noun, optuna)
        ours = str(config.hydra.sweeper.get("_target_", "")).startswith("orchard_app.hpo.")
        self._progress = Progress(sweep_dir, total_jobs(config), noun, str(config.training.monitor),
                                  direction_of(config), held=ours, replay=ours).start()  # fmt: skip
        self._sweep_config = None if ours else config  # a study's page: hpo/report.py

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        if self._progress is not None:  # a job of this process: its line comes at once
            self._progress.poll()
            self._update_page()

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        lock, self._lock = self._lock, None
        try:
            self._end(config)
        finally:
            if lock is not None:
                lock.__exit__(None, None, None)

    def _end(self, config) -> None:
        if self._refused:
            return
        from orchard_app.config.monitor import direction_of
        from orchard_app.sweep.direction import is_optuna
        from orchard_app.sweep.progress import closing_lines, mlflow_hint, summary_text

        progress, self._progress = self._progress, None
        if progress is not None:
            progress.stop()
            if not progress.released.is_set():  # the study was refused: its old rows are not ours
                return
        if self._undo_logs is not None:
            self._undo_logs()
            self._undo_logs = None
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        jobs = read_jobs(sweep_dir)
        closing = closing_lines()  # the study's files and dashboard, from the study sweeper
        if not jobs:
            for text in closing:
                print("\n" + text, file=sys.stderr, flush=True)
            return
        noun = "trial" if is_optuna(config.hydra.sweeper) else "job"
        text = summary_text(sweep_dir, jobs, str(config.training.monitor), direction_of(config),
                            noun)  # fmt: skip
        self._update_page(jobs, text)
        if hint := mlflow_hint(jobs):
            text += "\n" + hint
        print("\n" + "\n\n".join([text, *closing]), file=sys.stderr, flush=True)
        outcomes = {job["outcome"] for job in jobs}
        study = str(config.hydra.sweeper.get("_target_", "")).startswith("orchard_app.hpo.")
        if outcomes & set(FAILURES) and Outcome.INTERRUPTED not in outcomes and not study:
            raise SystemExit(1)  # (a study's failed trials are data; it ends on max_failure_rate)

    def _update_page(self, jobs=None, text: str | None = None) -> None:
        """A tracked grid's parent run shows its jobs' progress and summary table."""
        config = self._sweep_config
        if config is None or (config.get("tracking") or {}).get("name") != "mlflow":
            return
        from orchard_app.config.monitor import direction_of
        from orchard_app.sweep.direction import is_optuna
        from orchard_app.sweep.progress import summary_text
        from orchard_app.tracking import update_sweep_page

        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        jobs = read_jobs(sweep_dir) if jobs is None else jobs
        if text is None:
            noun = "trial" if is_optuna(config.hydra.sweeper) else "job"
            text = summary_text(sweep_dir, jobs, str(config.training.monitor), direction_of(config),
                                noun)  # fmt: skip
        update_sweep_page(config, sweep_dir, jobs=jobs, summary=text)


def _lock(sweep_dir: Path):
    """The sweep dir's lock, or one message naming the sweep that holds it (exit 1)."""
    from orchard_app.errors import RunLockedError, StorageError, print_error
    from orchard_app.rundir.lock import SweepLock

    try:
        return SweepLock(sweep_dir).__enter__()
    except (RunLockedError, StorageError) as e:
        print_error(e)
        raise SystemExit(e.exit_code) from None


def _create(sweep_dir: Path, given: str) -> None:
    """The sweep dir, made before any launcher does: a path that cannot be one is one message."""
    from orchard_app.errors import RunDirError, print_error

    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        error = RunDirError(f"hydra.sweep.dir={given} cannot be created ({e.strerror or e}); "
                            "choose a writable place with hydra.sweep.dir=<dir>, or fix its permissions.")  # fmt: skip
        print_error(error)
        raise SystemExit(error.exit_code) from None
