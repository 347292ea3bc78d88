"""What the command line does with a composed config: validate, train, and turn a user-facing
error into one clear message and a non-zero exit code (no traceback)."""

from __future__ import annotations

import shlex
import sys

from omegaconf import DictConfig

from orchard_app.errors import ConfigError, OrchardError, TrainingInterrupted


def run_job(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        from orchard_app.config.validate import validate

        validate(cfg)  # before torch is even imported
        from orchard_app.experiment import train

        return train(cfg)
    except TrainingInterrupted as e:  # the user (or the scheduler) asked to stop: the sweep too
        print(_message(e), file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except OrchardError as e:
        print(_message(e), file=sys.stderr, flush=True)
        if multirun:  # let the sweeper record this job as failed and carry on
            raise
        raise SystemExit(e.exit_code) from None


def _message(e: OrchardError | TrainingInterrupted) -> str:
    text = f"\norchard_app: {e.title}:\n{e}"
    if isinstance(e, ConfigError):
        text += "\n  (python -m orchard_app --help lists every option; --cfg job shows the composed config)"
    if isinstance(e, TrainingInterrupted) and e.checkpoint:
        text += f"\n  Resume with:\n    {resume_command(e.checkpoint)}"
    return text


def resume_command(checkpoint: str) -> str:
    from hydra.core.hydra_config import HydraConfig

    overrides = [
        o for o in HydraConfig.get().overrides.task if not o.startswith("training.resume=")
    ]
    return shlex.join(["python", "-m", "orchard_app", *overrides, f"training.resume={checkpoint}"])
