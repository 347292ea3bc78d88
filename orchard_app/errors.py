"""Errors a user can fix. Each message says what is wrong and what to do; every entry point
prints it with `print_error` (no traceback) and exits with its `exit_code`."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


def print_error(e: OrchardError | TrainingInterrupted, prog: str = "orchard_app", advice: str = ""):
    """The one message that stops a command: `<prog>: <title>:`, then the error's own text."""
    print(f"\n{prog}: {e.title}:\n{e}{advice}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def command(prog: str) -> Iterator[None]:
    """Around a command's work: an OrchardError ends it with its one message and exit code,
    Ctrl-C with exit code 130; never a traceback."""
    try:
        yield
    except OrchardError as e:
        print_error(e, prog=prog)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; no half-written file was kept.", file=sys.stderr, flush=True)
        raise SystemExit(130) from None


def first_line(e: BaseException, most: int = 600) -> str:
    """An error's first line, without a list's dash (its type's name when it says nothing); past
    `most` characters it is cut at a sentence or word boundary and marked with an ellipsis."""
    lines = str(e).strip().splitlines()
    text = lines[0].strip(" -") if lines else type(e).__name__
    if len(text) <= most:
        return text
    head = text[: most + 1]
    sentence = head.rfind(". ")
    return (head[: sentence + 1] if sentence > most // 2 else head.rsplit(" ", 1)[0]) + " …"


def cause(e: BaseException, most: int = 600) -> str:
    """'<error type>: <its first line>', the cause a one-message error quotes."""
    return f"{type(e).__name__}: {first_line(e, most)}"


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


class ExportError(OrchardError):
    """The deployment export failed: an operation ONNX cannot express, or an exported model
    whose outputs deviate from PyTorch's beyond export.max_deviation. Exit code 3, so a script
    can tell a failed export of a trained model from a failed training."""

    exit_code = 3
    title = "deployment export failed"


class NonFiniteLossError(OrchardError):
    title = "training diverged"


class TrackingError(OrchardError):
    title = "experiment tracking problem"


class HpoError(OrchardError):
    title = "hyper-parameter search problem"


class DistributedError(OrchardError):
    """A multi-process (DDP) run could not start, or another process of it stopped the run."""

    title = "multi-process run problem"


class SubmissionError(OrchardError):
    """sbatch refused a sweep's jobs (controller down, a partition or size the cluster lacks)."""

    title = "SLURM did not accept the jobs"


class CompareError(OrchardError):
    """`python -m orchard_app.compare` cannot build its table from the paths it was given."""

    title = "cannot compare"


class RunLockedError(OrchardError):
    title = "run directory busy"


class SweepLockedError(RunLockedError):
    title = "sweep directory busy"


class RunDirError(OrchardError):
    """The run directory cannot be used: another run's record, or not writable."""

    title = "run directory problem"


class StorageError(OrchardError):
    """A file of the run could not be written (disk full, read-only, permissions)."""

    title = "cannot write the run's files"

    def __init__(self, path, error: OSError):
        self.path, self.error = path, error
        reason = error.strerror or str(error)
        super().__init__(
            f"{path}: {reason}. Nothing half-written was kept. Free space or fix the permissions, "
            "or run in another directory (hydra.run.dir=...)."
        )


class RunPruned(Exception):
    """A callback (e.g. an Optuna pruner) ended the run early on purpose: not a failure.

    Subclassed by the HPO layer together with optuna.TrialPruned, so a sweeper sees its own type.
    """

    def __init__(self, message: str = "pruned", epoch: int | None = None):
        self.epoch = epoch
        super().__init__(message)


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
        self.requeue = False  # set when the scheduler will start this run again (SLURM)
        super().__init__(message)
