"""The job side of a trial: its sweeper passes the storage, study and trial id through
`hydra.job.env_set`; the job reloads the study with the sweep's pruner, reports the monitored
validation value after every epoch (an engine epoch callback) and stops when the pruner says
so. It tells its own outcome as soon as it ends, so trials of one batch can prune each other.
"""

from __future__ import annotations

import math
import os
from typing import Any

import optuna
from optuna.trial import TrialState

from orchard_app.errors import RunPruned
from orchard_app.hpo.contract import ENV_STORAGE, ENV_STUDY, ENV_TRIAL
from orchard_app.hpo.pruners import make_pruner
from orchard_app.hpo.storage import open_storage
from orchard_app.outcomes import Outcome

STATE = {Outcome.COMPLETED: TrialState.COMPLETE, Outcome.PRUNED: TrialState.PRUNED}  # else FAIL


class TrialPruned(optuna.TrialPruned, RunPruned):
    """Optuna's own type (what sweepers expect) and ours (what the outcome vocabulary maps)."""

    def __init__(self, message: str, epoch: int):
        RunPruned.__init__(self, message, epoch=epoch)


class JobTrial:
    def __init__(self, storage: str, study_name: str, trial_id: int, pruner: Any = None):
        self.study = optuna.load_study(
            study_name=study_name, storage=open_storage(storage), pruner=pruner
        )
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self.history: list[dict[str, float]] = []  # the validation epochs, kept if pruned

    @classmethod
    def from_env(cls) -> JobTrial | None:
        """The trial this job runs, when a study sweeper launched it; None otherwise."""
        if ENV_TRIAL not in os.environ:
            return None
        return cls(os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL]),
                   pruner=_sweep_pruner())  # fmt: skip

    @property
    def number(self) -> int:
        return self.trial.number

    def on_epoch_end(self, record: dict[str, Any], engine: Any) -> None:
        value, epoch = float(record[engine.monitor]), int(record["epoch"])
        self.history.append({k: record[k] for k in record if k == "epoch" or k.startswith("val_")}
                            | {"seconds": record["seconds"]})  # fmt: skip
        self.trial.set_user_attr("epoch_seconds", sum(h["seconds"] for h in self.history))
        if math.isfinite(value):
            self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise TrialPruned(f"trial #{self.number} pruned at epoch {epoch} "
                              f"({engine.monitor} {value:.4f})", epoch)  # fmt: skip

    def started(self, run_dir: str) -> None:
        self.trial.set_user_attr("job_dir", run_dir)

    def ended(self, outcome: Outcome, value: float | None = None, error: str | None = None,
              epoch: int | None = None) -> None:  # fmt: skip
        """Tell the study how this job ended; the sweeper tells only the jobs that could not."""
        if outcome == Outcome.COMPLETED and not math.isfinite(value):
            outcome, error = Outcome.FAILED, f"the objective is {value}"
        if epoch is not None:
            self.trial.set_user_attr("epochs_run", epoch)
        if outcome == Outcome.PRUNED:  # what it learnt before it was stopped, for the study
            self.trial.set_user_attr("pruned_at_epoch", epoch)
            self.trial.set_user_attr("val_history", self.history)
        state = STATE.get(outcome, TrialState.FAIL)
        if state == TrialState.FAIL:
            self.trial.set_user_attr("error", error)
        values = value if state == TrialState.COMPLETE else None
        self.study.tell(self.trial, values, state=state, skip_if_finished=True)


def _sweep_pruner():
    """The pruner configured on the sweeper (`hydra.sweeper.pruner`), built in this job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return make_pruner(HydraConfig.get().sweeper.get("pruner"))
