"""Launcher and Optuna log lines on the console once, in the app's format.

Each launch of Hydra's launchers logs `Launching 1 jobs locally` (or submitit's sweep dir) and
`#5 : <every override of the job>`, the trial's `hydra.job.env_set` plumbing included: during
a sweep a filter on those loggers drops the first and turns the second into the one line of
sweep/console.py `launched()`: `trial #5 launched: lr=0.000847 batch_size=32` (the swept keys
only). Optuna's own INFO lines ("A new study created in RDB ...", "Trial 3 finished ...") say
what the app's lines say already: its logger shows warnings only, in the format below.

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

from orchard_app.sweep.console import launched

LOGGERS = ("submitit",)
LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher",
             "hydra_plugins.hydra_submitit_launcher.submitit_launcher", "orchard_app.cluster")  # fmt: skip


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


class LaunchLines(logging.Filter):
    """A launcher's `#5 : <overrides>` record becomes `launched(5, <the swept values>)`; its
    per-launch `Launching N jobs locally` and `Submitit '...' sweep output dir` are dropped."""

    JOB = re.compile(r"\s*#(\d+) : (.*)", re.S)
    NOISE = re.compile(r"Launching \d+ jobs locally|Submitit '\w+' sweep output dir")

    def __init__(self, swept: set[str], noun: str) -> None:
        super().__init__()
        self.swept, self.noun = swept, noun

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if job := self.JOB.fullmatch(text):
            pairs = (o.partition("=") for o in job[2].split(" "))
            values = {k.lstrip("+~"): v for k, _, v in pairs if k.lstrip("+~") in self.swept}
            launched(int(job[1]), values, self.noun)
            return False
        return not self.NOISE.match(text)


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = self.formatTime(record, "%H:%M:%S")
        level = "" if record.levelno < logging.WARNING else f"{record.levelname}: "
        return f"[{stamp}] {level}{record.name}: {record.getMessage()}"


def route_launcher_logs(config: DictConfig, swept: set[str] = frozenset(), noun: str = "job",
                        optuna: bool = False) -> Callable[[], None]:  # fmt: skip
    """During a sweep: the launchers' per-job lines as `launched()` lines; a submitit
    launcher's logger, and Optuna's (`optuna`: the sweeper is Optuna's), through one
    deduplicating handler. Returns the undo."""
    launch_lines = LaunchLines(set(swept), noun)
    for name in LAUNCHERS:
        logging.getLogger(name).addFilter(launch_lines)
    launcher = config.hydra.launcher
    names = []  # (a subclass, e.g. hydra/launcher=slurm, keeps submitit_folder)
    if "submitit" in str(launcher.get("_target_", "")) or "submitit_folder" in launcher:
        import submitit  # noqa: F401  (configures its logger on import: do that first, then replace)

        names += LOGGERS
    if optuna:
        import optuna.logging  # noqa: F401  (adds its own handler on import: first, then replace)

        names.append("optuna")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Format())
    handler.addFilter(OncePerMessage())
    saved = {}
    for name in names:
        logger = logging.getLogger(name)
        saved[name] = (logger.handlers[:], logger.propagate, logger.level)
        logger.handlers, logger.propagate = [handler], False
        if name == "optuna":
            logger.setLevel(logging.WARNING)

    def undo() -> None:
        for name in LAUNCHERS:
            logging.getLogger(name).removeFilter(launch_lines)
        for name, (handlers, propagate, level) in saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
            logger.setLevel(level)
        handler.close()

    return undo
