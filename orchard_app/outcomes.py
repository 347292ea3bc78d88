"""How a run ended, in one vocabulary: completed, failed, interrupted, pruned, requeued, timeout,
cancelled.

Mapped once from what ended the run (`outcome_of(exception)`), then read by provenance.json,
the MLflow run status, the sweep's parent run, jobs.jsonl and its table, the Optuna trial state,
the console message and the exit code. A pruned trial is a normal end of a run (an early stop on
purpose), never a failure.
"""

from __future__ import annotations

from enum import StrEnum

from orchard_app.errors import OrchardError, RunPruned, TrainingInterrupted


class Outcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a signal or Ctrl-C; resumable from last.pt
    PRUNED = "pruned"  # stopped early on purpose by a pruner
    REQUEUED = "requeued"  # stopped by the scheduler, which starts it again (resume=auto)
    TIMEOUT = "timeout"  # the scheduler's time limit, with no requeue left (a launcher's record)
    CANCELLED = "cancelled"  # cancelled on the scheduler (scancel): a launcher's record, not a
    # success (the sweep exits 1); its last.pt is kept, training.resume=auto continues it


ENDED = tuple(o for o in Outcome if o is not Outcome.REQUEUED)  # a requeued job runs again
FAILURES = (Outcome.FAILED, Outcome.TIMEOUT, Outcome.CANCELLED)


# MLflow's run statuses: FINISHED / FAILED / KILLED; tags carry the exact outcome.
MLFLOW_STATUS = {
    Outcome.COMPLETED: "FINISHED",
    Outcome.PRUNED: "FINISHED",
    Outcome.FAILED: "FAILED",
    Outcome.INTERRUPTED: "KILLED",
    Outcome.REQUEUED: "KILLED",
    Outcome.TIMEOUT: "FAILED",
    Outcome.CANCELLED: "KILLED",
}


def is_pruned(exc: BaseException) -> bool:
    """Ours or Optuna's TrialPruned (matched by name: optuna is not imported here)."""
    return isinstance(exc, RunPruned) or any(c.__name__ == "TrialPruned" for c in type(exc).__mro__)


def outcome_of(exc: BaseException | None) -> Outcome:
    if exc is None:
        return Outcome.COMPLETED
    if is_pruned(exc):
        return Outcome.PRUNED
    if isinstance(exc, TrainingInterrupted):
        return Outcome.REQUEUED if exc.requeue else Outcome.INTERRUPTED
    if isinstance(exc, KeyboardInterrupt):
        return Outcome.INTERRUPTED
    return Outcome.FAILED


def exit_code(exc: BaseException | None) -> int:
    """0 for completed and pruned runs; 128+signal when interrupted; the error's own code."""
    if exc is None or is_pruned(exc):
        return 0
    if isinstance(exc, TrainingInterrupted):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, OrchardError):
        return exc.exit_code
    return 1
