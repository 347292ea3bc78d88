"""What the command line does with a composed config: validate, train, and turn a user-facing
error into one clear message and a non-zero exit code (no traceback).

A run that never started (a config error, Ctrl-C during start-up) leaves no run directory.
In a sweep a failed job does not end the sweep: it is recorded (sweep.py) and the sweep ends
with a summary and a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

from orchard_app.errors import ConfigError, OrchardError, TrainingInterrupted

FAILED_JOB_VALUE = float("nan")  # what a failed sweep job returns (Optuna records it as FAIL)


def run_job(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    from orchard_app.sweep import record_job, sweep_dir_of_job

    multirun = sweep_dir_of_job() is not None
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        from orchard_app.config.validate import validate

        validate(cfg)  # before torch is even imported
        from orchard_app.experiment import train

        value = train(cfg)
    except TrainingInterrupted as e:  # the user (or the scheduler) asked to stop: the sweep too
        print(_message(e), file=sys.stderr, flush=True)
        drop_if_empty(run_dir)
        record_job("requeued" if e.requeue else "interrupted", error=str(e))
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C before the run's own signal handling was in place
        print("\norchard_app: interrupted during start-up; nothing was written.",
              file=sys.stderr, flush=True)  # fmt: skip
        drop_if_empty(run_dir)
        record_job("interrupted", error="Ctrl-C during start-up")
        raise SystemExit(130) from None
    except OrchardError as e:
        print(_message(e), file=sys.stderr, flush=True)
        drop_if_empty(run_dir)
        if not multirun:
            raise SystemExit(e.exit_code) from None
        record_job("failed", error=f"{e.title}: {_first_line(e)}")
        return FAILED_JOB_VALUE  # the sweep goes on; its summary reports this job
    except Exception as e:
        from orchard_app.outcomes import is_pruned

        if multirun and is_pruned(e):  # the sweeper records it as pruned
            record_job("pruned", error=str(e))
        raise
    record_job("completed", value=value)
    return value


def drop_if_empty(run_dir: Path) -> None:
    """Remove a run directory that nothing was written to (claimed, but never started)."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()  # only succeeds when empty


def _first_line(e: BaseException) -> str:
    lines = [line.strip(" -") for line in str(e).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def _message(e: OrchardError | TrainingInterrupted) -> str:
    text = f"\norchard_app: {e.title}:\n{e}"
    if isinstance(e, ConfigError):
        text += "\n  (python -m orchard_app --help lists every option; --cfg job shows the composed config)"
    if isinstance(e, TrainingInterrupted) and e.checkpoint:
        text += f"\n  Resume with:\n    {resume_command(e.checkpoint)}"
    return text


def resume_command(checkpoint: str) -> str:
    """The same command, continuing the same run directory from its last.pt."""
    from hydra.core.hydra_config import HydraConfig

    overrides = [
        o for o in HydraConfig.get().overrides.task if not o.startswith("training.resume=")
    ]
    run_dir = Path(checkpoint).parent.parent
    return shlex.join(["python", "-m", "orchard_app", *overrides, f"hydra.run.dir={run_dir}",
                       "training.resume=auto"])  # fmt: skip
