"""The sweep's console lines, in the launcher's `[HH:MM:SS] text` style."""

from __future__ import annotations

import sys
import time


def say(text: str) -> None:
    """One console line in the launcher's `[HH:MM:SS] text` style. Printed, not logged: while
    an in-process job runs, the root logger writes that job's own log files."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
