"""What the command line does with a composed config: validate, train, and turn a user-facing
error into one clear message and a non-zero exit code (no traceback).

A run that never started (a config error, Ctrl-C during start-up) leaves no run directory.
In a sweep a failed job does not end the sweep: it is recorded (job_record.py) and the sweep ends
with a summary and a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from orchard_app.distributed.rank import process_rank
from orchard_app.errors import (
    ConfigError,
    OrchardError,
    StorageError,
    TrainingInterrupted,
    first_line,
    print_error,
)
from orchard_app.outcomes import Outcome, exit_code, is_pruned
from orchard_app.run.job_record import record_job
from orchard_app.rundir.layout import PROVENANCE, run_dir_of_checkpoint, sweep_dir_of_job
from orchard_app.rundir.provenance import amend_outcome

FAILED_JOB_VALUE = float("nan")  # what a failed sweep job returns (Optuna records it as FAIL)


def run_job(cfg: DictConfig, study_trial: Callable[[], Any] | None = None) -> float:
    """Validate and train one job; `study_trial()` returns the Optuna trial this job runs for
    (hydra/sweeper=orchard_optuna), or None: the entry point hands it in, so that a run never
    imports the study machinery."""
    from hydra.core.hydra_config import HydraConfig

    multirun = sweep_dir_of_job() is not None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    trial = None
    try:
        from orchard_app.config.validate import validate

        if study_trial is not None and process_rank().is_main:  # rank 0 reports for DDP
            trial = study_trial()  # first: a trial whose sampled values are invalid fails as such
        validate(cfg)  # before torch is even imported
        if trial is not None and run_dir.exists():
            trial.started(str(run_dir.resolve()))
        from orchard_app.run.train import train

        value = train(cfg, callbacks=[trial.on_epoch_end] if trial else ())
    except TrainingInterrupted as e:  # the user (or the scheduler) asked to stop: the sweep too
        drop_if_empty(run_dir)
        if e.requeue:  # SLURM's warning before a time limit or a preemption, under submitit
            try:  # submitit requeues the job and exits; with no requeue left it raises, and
                _hand_over_to_submitit()  # the launcher records the timeout (one row, not two)
            except SystemExit:
                print(f"\norchard_app: {e}; the job is requeued and continues from there.",
                      file=sys.stderr, flush=True)  # fmt: skip
                record_job(Outcome.REQUEUED, error=str(e))
                raise
            except Exception as no_requeue:  # the run's record said `requeued`: it timed out
                if process_rank().is_main:  # (the launcher reports it either way)
                    with contextlib.suppress(StorageError):
                        amend_outcome(run_dir / PROVENANCE, Outcome.TIMEOUT, str(no_requeue))
                raise
        if process_rank().is_main:  # (the other processes of a DDP run stopped with it)
            print_error(e, advice=_advice(e))
        if os.environ.get("SUBMITIT_EXECUTOR") != "slurm":  # on SLURM the launcher records the
            record_job(Outcome.INTERRUPTED, error=str(e))  # end from the job's state (scancel)
        raise SystemExit(exit_code(e)) from None
    except KeyboardInterrupt as e:  # Ctrl-C before the run's own signal handling was in place
        print("\norchard_app: interrupted during start-up; nothing was written.",
              file=sys.stderr, flush=True)  # fmt: skip
        drop_if_empty(run_dir)
        record_job(Outcome.INTERRUPTED, error="Ctrl-C during start-up")
        raise SystemExit(exit_code(e)) from None
    except OrchardError as e:
        if process_rank().is_main or not isinstance(e, ConfigError):  # the same on every rank
            print_error(e, advice=_advice(e))
        drop_if_empty(run_dir)
        if not multirun:
            raise SystemExit(exit_code(e)) from None
        _ended(trial, Outcome.FAILED, error=f"{e.title}: {first_line(e)}")
        return FAILED_JOB_VALUE  # the sweep goes on; its summary reports this job
    except Exception as e:
        if not (multirun and is_pruned(e)):
            raise
        epoch = getattr(e, "epoch", None)
        print(f"\norchard_app: {e}", file=sys.stderr, flush=True)
        _ended(trial, Outcome.PRUNED, error=str(e), epoch=epoch)
        if trial is None:
            raise  # another sweeper (e.g. the stock Optuna one) handles TrialPruned itself
        return FAILED_JOB_VALUE  # told already, so the sweeper need not see an exception
    _ended(trial, Outcome.COMPLETED, value=value)
    return value


def _ended(trial, outcome: Outcome, **row: Any) -> None:
    """The job tells its own end: to its trial's study at once (so the trials of one batch can
    prune each other), then in the sweep's jobs.jsonl."""
    if trial is not None:
        trial.ended(outcome, **row)
    record_job(outcome, **row)


def _hand_over_to_submitit() -> None:
    """Call submitit's own SIGUSR2 handler (ours was in place while training ran): it pickles
    the job again (the launcher adds training.resume=auto on restart), requeues it with
    `scontrol requeue` and exits; with no requeue budget left it raises UncompletedJobError,
    which the launcher reports as a timeout."""
    import signal

    handler = signal.getsignal(signal.SIGUSR2)
    if callable(handler):
        handler(signal.SIGUSR2, None)


def drop_if_empty(run_dir: Path) -> None:
    """Remove a run directory that nothing was written to (claimed, but never started)."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only succeeds when empty


def _advice(e: OrchardError | TrainingInterrupted) -> str:
    if isinstance(e, ConfigError):
        return "\n  (python -m orchard_app --help lists every option; --cfg job shows the composed config)"
    if isinstance(e, TrainingInterrupted) and e.checkpoint:
        return f"\n  Resume with:\n    {resume_command(e.checkpoint)}"
    return ""


def resume_command(checkpoint: str) -> str:
    """The same command, continuing the same run directory from its last.pt."""
    from hydra.core.hydra_config import HydraConfig

    overrides = [
        o for o in HydraConfig.get().overrides.task if not o.startswith("training.resume=")
    ]
    run_dir = run_dir_of_checkpoint(checkpoint)
    return shlex.join([*_launch_command(), *overrides, f"hydra.run.dir={run_dir}",
                       "training.resume=auto"])  # fmt: skip


def _launch_command() -> list[str]:
    """How this run was started: torchrun with its process count, or a plain python."""
    import os

    process = process_rank()
    if process.launcher != "torchrun" or process.world_size == 1:
        return ["python", "-m", "orchard_app"]
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or process.world_size)
    nodes = max(1, process.world_size // per_node)
    return ["torchrun", *([f"--nnodes={nodes}"] if nodes > 1 else []),
            f"--nproc_per_node={per_node}", "-m", "orchard_app"]  # fmt: skip
