"""One run directory for the life of a run: the lock, logging, provenance and the trackers.

Entering first checks that the directory holds no other run's record (a finished run is only
continued by a resume of its own last.pt), then takes the lock (lock.py), routes logging to the
run dir, writes provenance.json (status `running`), requirements.txt and `.hydra/` (the
composed config: written here, after the lock, so a refused run never touches another run's
record). Leaving records the outcome in provenance.json first, then closes the trackers (so the
provenance they upload is final), then restores logging and releases the lock, in that order
and even when a step fails.

Only the main process of a multi-process run does any of this; the others (`main=False`) use
the same directory, write nothing and log only warnings and errors to the console.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from orchard_app.atomic import remove_stale_temp_files
from orchard_app.errors import RunDirError, StorageError
from orchard_app.outcomes import outcome_of
from orchard_app.rundir import layout
from orchard_app.rundir.lock import RunLock
from orchard_app.rundir.logging import setup_console_only, setup_logging
from orchard_app.rundir.provenance import Provenance, read_provenance, requirements, write_record

log = logging.getLogger("orchard_app.tracking")


class RunDirectory:
    def __init__(
        self,
        path: Path,
        fields: dict[str, Any],
        resumed_from: str | None = None,
        continues: bool = False,
        main: bool = True,
        job_config=None,
    ):
        self.path = Path(path)
        self.fields = fields
        self.resumed_from, self.continues = resumed_from, continues
        self.main, self.job_config = main, job_config
        self.run_id = uuid.uuid4().hex[:12]
        self.provenance: Provenance | None = None
        self._stack = contextlib.ExitStack()  # lock, logging (released last)
        self._trackers = contextlib.ExitStack()  # closed after provenance is final

    def __enter__(self) -> RunDirectory:
        if not self.main:
            self._stack.callback(setup_console_only(logging.WARNING))
            return self
        self._refuse_another_runs_dir()
        with self._stack as stack:
            stack.enter_context(RunLock(self.path))
            if self.continues:  # a writer killed mid-write (kill -9) left its temp file
                remove_stale_temp_files(self.path)
            stack.callback(setup_logging(self.path / layout.LOGS_DIR, self.run_id))
            self.provenance = Provenance(
                self.path / layout.PROVENANCE, {"run_id": self.run_id, **self.fields},
                resumed_from=self.resumed_from, continues=self.continues,
            )  # fmt: skip
            write_record(self.path / layout.REQUIREMENTS, requirements())
            write_hydra_record(self.path, self.job_config)
            self._stack = stack.pop_all()
        return self

    def _refuse_another_runs_dir(self) -> None:
        """A directory that already holds a run's record is that run's: only its own resume
        may write there (checked before anything is written, lock file included)."""
        previous = read_provenance(self.path / layout.PROVENANCE)
        if previous is None or self.continues:
            return
        if (self.path / layout.LOCK).exists():  # a live run: name its holder, not a resume
            with RunLock(self.path):
                pass
        if (sweep := layout.sweep_dir_of_job()) is not None:  # one line: the table shows one
            raise RunDirError(
                f"{self.path} already holds this job's run (status {previous.get('status')}) "
                f"from an earlier sweep in {sweep}; continue the sweep with the same command "
                "plus training.resume=auto (completed jobs keep their results, the others "
                "continue from last.pt), or give it a new hydra.sweep.dir"
            )
        raise RunDirError(
            f"{self.path} already holds a run (status {previous.get('status')}, started "
            f"{previous.get('started')}); a new run would overwrite its record.\n"
            "  Continue that run with training.resume=auto, or start this one in a new "
            "directory: leave hydra.run.dir at its default, which never collides."
        )

    def track(self, tracker):
        """Enter a tracker (see `open_tracker`) for the rest of the run and return it; its
        `info` (e.g. the MLflow run id) goes into provenance.json."""
        tracker = self._trackers.enter_context(tracker)
        if self.provenance is not None and (info := getattr(tracker, "info", None)):
            self.provenance.update(tracking=info)
        return tracker

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._stack:
            if self.provenance is not None:
                error = None if exc is None else f"{type(exc).__name__}: {exc}"
                extra = {"stopped_at_epoch": exc.epoch} if getattr(exc, "epoch", None) else {}
                try:
                    self.provenance.finish(str(outcome_of(exc)), error, **extra)
                except StorageError as e:  # disk full: the run's own error is the one to report
                    log.error("could not record the outcome in provenance.json: %s", e)
            try:
                self._trackers.__exit__(exc_type, exc, tb)
            except Exception as e:  # the run's own outcome stands; the tracker's failure is logged
                log.error("tracking: closing the run failed: %s: %s", type(e).__name__, e)


def write_hydra_record(run_dir: Path, job_config) -> None:
    """`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml`, as Hydra writes them (the app
    sets `hydra.output_subdir: null` and writes them itself once it holds the run's lock)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if job_config is None or not HydraConfig.initialized():
        return
    hydra_root = HydraConfig.instance().cfg  # {"hydra": ...}, as Hydra saves it
    out = run_dir / layout.HYDRA_DIR
    out.mkdir(exist_ok=True)
    write_record(out / layout.HYDRA_CONFIG, OmegaConf.to_yaml(job_config))
    write_record(out / layout.HYDRA_HYDRA, OmegaConf.to_yaml(hydra_root))
    write_record(out / layout.HYDRA_OVERRIDES, OmegaConf.to_yaml(hydra_root.hydra.overrides.task))
