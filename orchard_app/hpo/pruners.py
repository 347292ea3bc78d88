"""Optuna objects from `_target_` configs (pruner, sampler), built the same way in the sweeper
and in each job (the job reloads the study with the sweep's pruner)."""

from __future__ import annotations

from typing import Any

import optuna
from hydra.utils import instantiate

OPTUNA_TARGETS = ("optuna.pruners.*", "optuna.samplers.*")


def make_pruner(cfg: Any) -> optuna.pruners.BasePruner:
    """An Optuna pruner from a `_target_` config; null means no pruning."""
    if cfg is None:
        return optuna.pruners.NopPruner()
    return instantiate(cfg, _execution_whitelist_=OPTUNA_TARGETS)
