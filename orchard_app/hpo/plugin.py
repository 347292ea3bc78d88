"""`hydra/sweeper=orchard_optuna`: Hydra's Optuna sweeper plus pruning, resumable studies,
study early stop and study artifacts (the work is done in orchard_app/hpo/sweeper.py).

Hydra finds it through the `hydra.plugins` entry point (pyproject.toml) and imports this
module at every start (`--help` too), so it stays light: no optuna or torch import here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra_plugins.hydra_optuna_sweeper.config import OptunaSweeperConf


@dataclass
class OrchardOptunaSweeperConf(OptunaSweeperConf):
    _target_: str = "orchard_app.hpo.plugin.OrchardOptunaSweeper"
    direction: Any = None  # null: from training.monitor (max for accuracy/AUC/F1, min for a loss)
    storage: Any | None = None  # null: sqlite:///<sweep dir>/optuna.db; journal:///path.log too
    study_name: str | None = "orchard"  # stable, so the same command resumes the same study
    n_trials: int = 20  # the study's total: a re-run runs only the missing trials
    n_jobs: int = 1  # trials in flight at once (hydra/launcher=local or slurm; basic: one by one)
    max_failure_rate: float = 0.5  # of finished trials; pruned trials are not failures
    pruner: Any | None = None  # an optuna pruner as a _target_ config, e.g. MedianPruner
    params: dict[str, str] | None = field(default_factory=dict)
    # true: a new trial starts the moment one ends (n_jobs always busy); false: batches of n_jobs
    asynchronous: bool = True
    heartbeat_interval: int | None = 30  # s between a trial's heartbeats (SQLite, PostgreSQL)
    grace_period: int | None = None  # s without one before a trial is lost (null: 2 x interval)
    max_retry: int = 1  # a lost trial (killed job, no heartbeat) runs again this many times


class OrchardOptunaSweeper(Sweeper):
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def setup(self, *, hydra_context, task_function, config) -> None:
        from orchard_app.hpo.sweeper import StudySweeper

        self.sweeper = StudySweeper(**self.kwargs)
        self.sweeper.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: list[str]) -> Any:
        return self.sweeper.sweep(arguments)


ConfigStore.instance().store(
    group="hydra/sweeper", name="orchard_optuna", node=OrchardOptunaSweeperConf,
    provider="orchard_app",
)  # fmt: skip
