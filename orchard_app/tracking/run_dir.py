"""One run directory for the life of a run: the lock, logging, provenance and the trackers.

Entering takes the lock (lock.py), routes logging to the run dir, writes provenance.json
(status `running`) and requirements.txt. Leaving records the outcome in provenance.json first,
then closes the trackers (so the provenance they upload is final), then restores logging and
releases the lock, in that order and even when a step fails.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from pathlib import Path
from typing import Any

from orchard_app.tracking.lock import RunLock
from orchard_app.tracking.logging import setup_logging
from orchard_app.tracking.provenance import Provenance, outcome, requirements

log = logging.getLogger("orchard_app.tracking")


class RunDirectory:
    def __init__(self, path: Path, fields: dict[str, Any]):
        self.path = Path(path)
        self.fields = fields
        self.run_id = uuid.uuid4().hex[:12]
        self.provenance: Provenance | None = None
        self._stack = contextlib.ExitStack()  # lock, logging (released last)
        self._trackers = contextlib.ExitStack()  # closed after provenance is final

    def __enter__(self) -> RunDirectory:
        with self._stack as stack:
            stack.enter_context(RunLock(self.path))
            stack.callback(setup_logging(self.path / "logs", self.run_id))
            self.provenance = Provenance(
                self.path / "provenance.json", {"run_id": self.run_id, **self.fields}
            )
            (self.path / "requirements.txt").write_text(requirements())
            self._stack = stack.pop_all()
        return self

    def track(self, tracker):
        """Enter a tracker (see `open_tracker`) for the rest of the run and return it; its
        `info` (e.g. the MLflow run id) goes into provenance.json."""
        tracker = self._trackers.enter_context(tracker)
        if info := getattr(tracker, "info", None):
            self.provenance.update(tracking=info)
        return tracker

    def __exit__(self, exc_type, exc, tb) -> None:
        with self._stack:
            if self.provenance is not None:
                status = outcome(exc)
                error = None if exc is None else f"{type(exc).__name__}: {exc}"
                self.provenance.finish(status, error)
            try:
                self._trackers.__exit__(exc_type, exc, tb)
            except Exception as e:  # the run's own outcome stands; the tracker's failure is logged
                log.error("tracking: closing the run failed: %s: %s", type(e).__name__, e)
