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
    # null: <dataset>-<model>-<hpo preset>, stable, so the same command resumes the same study
    # (a storage holding a study named `orchard`, the former default, keeps using it)
    study_name: str | None = None
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


# The pruner presets, `hpo/pruner=median|percentile|hyperband|none` (hpo=quick|full pick median).
# Their warm-up follows the trial's length: hpo.warmup x training.epochs, resolved in each job
# with that job's own epochs; any field can still be overridden (hydra.sweeper.pruner.<key>=...).
WARMUP = "${orchard_warmup:${training.epochs},${hpo.warmup}}"


@dataclass
class MedianPrunerConf:
    """Stop a trial whose value at an epoch is worse than the median of earlier trials there."""

    _target_: str = "optuna.pruners.MedianPruner"
    n_startup_trials: int = 3  # trials that finish before any pruning
    n_warmup_steps: int = WARMUP  # epochs before a trial can be pruned
    interval_steps: int = 1
    n_min_trials: int = 1  # trials that reached an epoch before it is judged


@dataclass
class PercentilePrunerConf(MedianPrunerConf):
    """Gentler than the median: keep the best `percentile` % of trials at each epoch (75: stop
    only a trial in the worst quarter there)."""

    _target_: str = "optuna.pruners.PercentilePruner"
    percentile: float = 75.0


@dataclass
class HyperbandPrunerConf:
    """Multi-fidelity (successive halving in several brackets), resource = epochs: keeps the
    best 1/reduction_factor of the trials at each rung, from min_resource to training.epochs."""

    _target_: str = "optuna.pruners.HyperbandPruner"
    min_resource: int = "${orchard_warmup:${training.epochs},${hpo.warmup},1}"  # at least 1
    max_resource: int = "${training.epochs}"
    reduction_factor: int = 3


def _register_pruner_presets() -> None:
    store = ConfigStore.instance()
    for name, node in (("median", MedianPrunerConf), ("percentile", PercentilePrunerConf),
                       ("hyperband", HyperbandPrunerConf)):  # fmt: skip
        store.store(group="hpo/pruner", name=name, node=node, package="hydra.sweeper.pruner",
                    provider="orchard_app")  # fmt: skip
    store.store(group="hpo/pruner", name="none", node={"pruner": None}, package="hydra.sweeper",
                provider="orchard_app")  # fmt: skip


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
_register_pruner_presets()
