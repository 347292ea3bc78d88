"""Launcher warnings on the console once, in the app's format.

submitit configures its logger with two handlers of its own (every record on stdout, warnings
again on stderr) and lets records propagate to the root logger too (Hydra's console handler):
each warning of the launcher process, e.g. "Bypassing sacct error" on a cluster without
accounting, came out three times, and again at every status poll. During a sweep the
`submitit` logger writes through one handler here, `[HH:MM:SS] WARNING: submitit: ...`, and a
warning that only differs by its numbers (poll count, job ids) from one already shown is
dropped. The jobs' own logs (their .submitit/ files and run logs) are not affected.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Callable

from omegaconf import DictConfig

LOGGERS = ("submitit",)


class OncePerMessage(logging.Filter):
    """Let a record through the first time its message, numbers aside, is seen."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        key = re.sub(r"\d+", "#", record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"[{stamp}] {level}{record.name}: {record.getMessage()}"


def route_launcher_logs(config: DictConfig) -> Callable[[], None] | None:
    """For a submitit launcher: its logger through one deduplicating handler; returns the undo."""
    launcher = config.hydra.launcher
    if "submitit" not in str(launcher.get("_target_", "")) and "submitit_folder" not in launcher:
        return None  # (a subclass, e.g. hydra/launcher=slurm, keeps submitit_folder)
    import submitit  # noqa: F401  (configures its logger on import: do that first, then replace)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    handler.addFilter(OncePerMessage())
    saved = {}
    for name in LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate)
        logger.handlers, logger.propagate = [handler], False

    def undo() -> None:
        for name, (handlers, propagate) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        handler.close()

    return undo
