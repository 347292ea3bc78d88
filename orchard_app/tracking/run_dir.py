"""One run directory, one writer: the lock, provenance and logging for the life of a run.

The lock is a `filelock` (flock) on <run dir>/.run.lock: the OS drops it when the holder dies,
so a lock left by a killed process never blocks the next run, while a live holder makes a second
run fail at once with its PID and host (read from .run.lock.json).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from orchard_app.errors import RunLockedError, TrainingInterrupted
from orchard_app.tracking.logging import setup_logging
from orchard_app.tracking.provenance import Provenance, now, requirements


class RunDirectory:
    def __init__(self, path: Path, fields: dict[str, Any]):
        self.path = Path(path)
        self.fields = fields
        self.run_id = uuid.uuid4().hex[:12]
        self.provenance: Provenance | None = None
        self._lock = FileLock(str(self.path / ".run.lock"), blocking=False)
        self._owner = self.path / ".run.lock.json"
        self._undo_logging = None

    def __enter__(self) -> RunDirectory:
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise RunLockedError(self._busy_message()) from None
        self._owner.write_text(
            json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()})
        )
        self._undo_logging = setup_logging(self.path / "logs", self.run_id)
        self.provenance = Provenance(
            self.path / "provenance.json", {"run_id": self.run_id, **self.fields}
        )
        (self.path / "requirements.txt").write_text(requirements())
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self.provenance is not None:
                if exc is None:
                    self.provenance.finish("completed")
                elif isinstance(exc, TrainingInterrupted | KeyboardInterrupt):
                    self.provenance.finish("interrupted", str(exc) or type(exc).__name__)
                else:
                    self.provenance.finish("failed", f"{type(exc).__name__}: {exc}")
        finally:
            if self._undo_logging is not None:
                self._undo_logging()
            self._owner.unlink(missing_ok=True)
            self._lock.release()

    def _busy_message(self) -> str:
        try:
            owner = json.loads(self._owner.read_text())
            who = f"PID {owner['pid']} on host {owner['host']} (since {owner['since']})"
        except (OSError, ValueError, KeyError):
            who = "another process"
        return (
            f"{self.path} is locked by {who}: another run is writing there. The lock file is "
            f"{self.path / '.run.lock'}. Wait for that run to finish, or start this one in a new run "
            f"directory (leave hydra.run.dir at its default)."
        )
