"""One writer per run directory: a `filelock` (flock) on <run dir>/.run.lock; one sweep per
sweep directory: the same on <sweep dir>/.sweep.lock (`SweepLock`), held by the sweep's
launcher process from its start to its end.

The OS drops a flock when its holder dies, so a lock left by a killed process (kill -9, OOM,
a lost node) never blocks the next run, and nothing has to guess whether a lock is stale. A live
holder makes a second run fail at once; the holder's PID and host come from .run.lock.json,
written after the lock is taken (filelock leaves the lock file itself to the lock).
On a filesystem without flock, filelock falls back to a PID/host marker file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from orchard_app.atomic import atomic_write
from orchard_app.errors import RunLockedError, StorageError, SweepLockedError
from orchard_app.rundir.layout import LOCK, LOCK_HOLDER, SWEEP_LOCK, SWEEP_LOCK_HOLDER
from orchard_app.rundir.provenance import now


class RunLock:
    FILES = (LOCK, LOCK_HOLDER)
    BUSY = RunLockedError

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.path = self.directory / self.FILES[0]
        self.owner = self.directory / self.FILES[1]
        self._lock = FileLock(str(self.path), blocking=False)

    def __enter__(self) -> RunLock:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:
            raise self.BUSY(self._busy_message(self._holder_text())) from None
        except OSError as e:  # read-only or not ours: say so before anything else happens
            raise StorageError(self.path, e) from None
        try:
            atomic_write(self.owner, json.dumps(_me()) + "\n")
        except BaseException as e:
            self._lock.release()
            if isinstance(e, OSError):
                raise StorageError(self.owner, e) from None
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.owner.unlink(missing_ok=True)
        finally:
            self._lock.release()

    def holder(self, wait: float = 1.0) -> dict | None:
        """Who holds the lock, from the owner file (briefly waiting for a holder that has just
        taken the lock and not yet written it)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                return json.loads(self.owner.read_text())
            except (OSError, ValueError):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.05)

    def _holder_text(self) -> str:
        owner = self.holder()
        if owner:
            return (
                f"PID {owner.get('pid')} on host {owner.get('host')} (since {owner.get('since')})"
            )
        return "another process (PID and host unknown)"

    def _busy_message(self, who: str) -> str:
        return (
            f"the run directory {self.directory} is locked by {who}: another run is writing "
            f"there (lock file {self.path}).\n"
            f"  Wait for that run to finish, or start this one in a new directory: leave "
            f"hydra.run.dir at its default, which never collides."
        )


class SweepLock(RunLock):
    """One sweep per sweep dir: a second sweep there would submit jobs into the first one's
    directory, read its jobs.jsonl as its own and record its jobs as lost."""

    FILES = (SWEEP_LOCK, SWEEP_LOCK_HOLDER)
    BUSY = SweepLockedError

    def _busy_message(self, who: str) -> str:
        return (
            f"the sweep directory {self.directory} is in use by the sweep of {who} (lock file "
            f"{self.path}); nothing was submitted.\n"
            "  Wait for that sweep to finish, or give this one its own directory: "
            "hydra.sweep.dir=<new dir> (or leave it at its default, which never collides). "
            "Sweeps that share one Optuna study each take their own sweep dir and the same "
            "hydra.sweeper.storage."
        )


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": now()}
