"""The job side of a trial: its sweeper passes the storage, study and trial id through
`hydra.job.env_set`; the job reloads the study with the sweep's pruner, reports the monitored
validation value after every epoch (an engine epoch callback) and stops when the pruner says
so. It tells its own outcome as soon as it ends, so trials of one batch can prune each other.
On a database storage it sends heartbeats while it runs, so that a job killed outright (kill -9,
out of memory, a lost node) is noticed by the sweeper during the study. A storage that stops
answering costs the job its pruning checks and its word to the study, never its own outcome:
the run dir and jobs.jsonl still record how it ended, and the next sweep reads it from there.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from typing import Any

import optuna
from optuna.trial import TrialState

from orchard_app.errors import RunPruned
from orchard_app.hpo.contract import ENV_HEARTBEAT, ENV_STORAGE, ENV_STUDY, ENV_TRIAL
from orchard_app.hpo.pruners import make_pruner
from orchard_app.hpo.storage import STORAGE_ERRORS, open_storage, why_storage_failed
from orchard_app.outcomes import Outcome

STATE = {Outcome.COMPLETED: TrialState.COMPLETE, Outcome.PRUNED: TrialState.PRUNED}  # else FAIL


class TrialPruned(optuna.TrialPruned, RunPruned):
    """Optuna's own type (what sweepers expect) and ours (what the outcome vocabulary maps)."""

    def __init__(self, message: str, epoch: int):
        RunPruned.__init__(self, message, epoch=epoch)


class JobTrial:
    def __init__(self, storage: str, study_name: str, trial_id: int, pruner: Any = None,
                 heartbeat: int | None = None):  # fmt: skip
        self.url = storage
        self.study = optuna.load_study(
            study_name=study_name, storage=open_storage(storage, heartbeat), pruner=pruner
        )
        self.trial = optuna.trial.Trial(self.study, trial_id)
        self._silent = False  # the storage stopped answering (said once)
        self.history: list[dict[str, float]] = []  # the validation epochs, kept if pruned
        self._beating = threading.Event()
        if heartbeat and getattr(self.study._storage, "get_heartbeat_interval", lambda: None)():
            threading.Thread(target=self._beat, args=(trial_id, heartbeat), daemon=True).start()

    def _beat(self, trial_id: int, every: int) -> None:
        """Optuna's heartbeat, in a daemon thread (Optuna's own thread is not one: a job ending
        by an exception would hang at exit waiting for it)."""
        while not self._beating.is_set():
            try:
                self.study._storage.record_heartbeat(trial_id)  # pinned: optuna 5
            except Exception as e:  # the storage is away: the job goes on
                self._lost_storage(e)
            self._beating.wait(every)

    def _lost_storage(self, e: BaseException) -> None:
        if not self._silent:
            self._silent = True
            from orchard_app.hpo.storage import masked

            print(f"\norchard_app: the study storage {masked(self.url)} stopped answering "
                  f"({why_storage_failed(e)}); this job goes on without pruning and "
                  "keeps its outcome in its run dir and jobs.jsonl.", file=sys.stderr, flush=True)  # fmt: skip

    @classmethod
    def from_env(cls) -> JobTrial | None:
        """The trial this job runs, when a study sweeper launched it; None otherwise."""
        if ENV_TRIAL not in os.environ:
            return None
        return cls(os.environ[ENV_STORAGE], os.environ[ENV_STUDY], int(os.environ[ENV_TRIAL]),
                   pruner=_sweep_pruner(), heartbeat=int(os.environ.get(ENV_HEARTBEAT) or 0))  # fmt: skip

    @property
    def number(self) -> int:
        return self.trial.number

    def on_epoch_end(self, record: dict[str, Any], engine: Any) -> None:
        value, epoch = float(record[engine.monitor]), int(record["epoch"])
        self.history.append({k: record[k] for k in record if k == "epoch" or k.startswith("val_")}
                            | {"seconds": record["seconds"]})  # fmt: skip
        if self._silent:
            return
        try:
            self.trial.set_user_attr("epoch_seconds", sum(h["seconds"] for h in self.history))
            if math.isfinite(value):
                self.trial.report(value, step=epoch)
            # never at the last epoch: stopping then saves nothing and drops a finished result
            prune = epoch < engine.epochs and self.trial.should_prune()
        except STORAGE_ERRORS as e:
            self._lost_storage(e)
            return
        if prune:
            raise TrialPruned(f"trial #{self.number} pruned at epoch {epoch} "
                              f"({engine.monitor} {value:.4f})", epoch)  # fmt: skip

    def started(self, run_dir: str) -> None:
        try:
            self.trial.set_user_attr("job_dir", run_dir)
        except STORAGE_ERRORS as e:
            self._lost_storage(e)

    def ended(self, outcome: Outcome, value: float | None = None, error: str | None = None,
              epoch: int | None = None) -> None:  # fmt: skip
        """Tell the study how this job ended; the sweeper tells only the jobs that could not."""
        if outcome == Outcome.COMPLETED and not math.isfinite(value):
            outcome, error = Outcome.FAILED, f"the objective is {value}"
        state = STATE.get(outcome, TrialState.FAIL)
        try:
            if epoch is not None:
                self.trial.set_user_attr("epochs_run", epoch)
            if outcome == Outcome.PRUNED:  # what it learnt before it was stopped, for the study
                self.trial.set_user_attr("pruned_at_epoch", epoch)
                self.trial.set_user_attr("val_history", self.history)
            if state == TrialState.FAIL:
                self.trial.set_user_attr("error", error)
        except STORAGE_ERRORS as e:
            self._lost_storage(e)
        values = value if state == TrialState.COMPLETE else None
        self._beating.set()
        try:
            self.study.tell(self.trial, values, state=state, skip_if_finished=True)
        except STORAGE_ERRORS as e:
            self._lost_storage(e)


def _sweep_pruner():
    """The pruner configured on the sweeper (`hydra.sweeper.pruner`), built in this job."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return make_pruner(HydraConfig.get().sweeper.get("pruner"))
