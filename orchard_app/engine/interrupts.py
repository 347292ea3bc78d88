"""SIGTERM / SIGINT (and, on a cluster, the scheduler's warning signal) in one place.

Outside the training loop a signal raises TrainingInterrupted at once, so the run directory
records the status. Inside the loop (`deferred()`), the first signal only sets a flag: the
loop finishes the current step, writes last.pt and then raises. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from orchard_app.errors import TrainingInterrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """`requeue`: signals after which the scheduler will start the run again (SLURM's SIGUSR2
    under submitit, see runtime/context.py `stop_policy`); they are caught like the others."""

    def __init__(self, requeue: tuple[int, ...] = ()) -> None:
        self.requeue = tuple(requeue)
        self.signum: int | None = None
        self._deferred = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (*SIGNALS, *self.requeue):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Within this block a signal only sets the flag; the caller checks `requested`."""
        self._deferred = True
        try:
            yield
        finally:
            self._deferred = False

    def _handle(self, signum: int, frame) -> None:
        # No logging here: the signal can land while the main thread is inside a logging call,
        # and buffered streams are not re-entrant. os.write is unbuffered and safe.
        name = signal.Signals(signum).name
        if self._deferred and self.signum is None:
            self.signum = signum
            notice = f"\n{name} received: finishing the current step, then saving last.pt "
            os.write(2, (notice + "(Ctrl-C again to stop at once)\n").encode())
            return
        self.signum = signum
        raise self.error(f"stopped by {name}", signum)  # train() adds what was saved

    def error(self, message: str, signum: int) -> TrainingInterrupted:
        stop = TrainingInterrupted(message, signum)
        stop.requeue = signum in self.requeue
        return stop
