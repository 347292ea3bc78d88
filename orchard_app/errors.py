"""Errors a user can fix. Each message says what is wrong and what to do; the CLI prints it
without a traceback and exits non-zero (see cli.py)."""

from __future__ import annotations


class OrchardError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""

    exit_code = 1
    title = "error"


class ConfigError(OrchardError):
    """One or more config values are invalid; raised before any data or model is touched."""

    exit_code = 2
    title = "invalid config"

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"  - {p}" for p in problems))


class DataError(OrchardError):
    title = "dataset problem"


class ModelError(OrchardError):
    title = "model problem"


class CheckpointError(OrchardError):
    title = "checkpoint problem"


class NonFiniteLossError(OrchardError):
    title = "training diverged"


class TrackingError(OrchardError):
    title = "experiment tracking problem"


class RunLockedError(OrchardError):
    title = "run directory busy"


class TrainingInterrupted(BaseException):
    """SIGTERM/SIGINT stopped the run (after writing last.pt when training had started).

    A BaseException, like KeyboardInterrupt: a stop request must not be swallowed by an
    `except Exception` on its way out (logging handlers, tracker clean-up, Hydra's job runner),
    and it ends a whole sweep, not just its current job.
    """

    title = "interrupted"

    def __init__(self, message: str, signum: int):
        self.signum = signum
        self.exit_code = 128 + signum  # the shell convention: 130 for Ctrl-C, 143 for SIGTERM
        self.checkpoint: str | None = None  # last.pt, when one was written
        super().__init__(message)
