"""What a study says about itself, so that optuna-dashboard (or anyone opening the storage)
knows what it is: a name that says what it searches, the objective named after the monitor,
and user attributes recording the dataset, model, search space, fixed overrides, pruner,
sampler and the command that ran it."""

from __future__ import annotations

import shlex
import sys
import warnings
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf

from orchard_app.config.resolvers import slug

LEGACY_NAME = "orchard"  # every study's name before names said what they are


def study_name(given: str | None, existing: list[str], config: DictConfig) -> str:
    """`hydra.sweeper.study_name` when given; else `<dataset>-<model>-<preset>` (stable across
    resume: it depends only on the command's config). A storage holding a study under the old
    fixed name `orchard` (and none under the new one) keeps using it, so an old sweep dir resumes."""
    if given:
        return given
    choices = config.hydra.runtime.choices
    preset = choices.get("hpo") or "study"
    name = "-".join(slug(v) for v in (config.dataset.name, config.model.name, preset))
    if name not in existing and LEGACY_NAME in existing:
        return LEGACY_NAME
    return name


def describe(
    study: optuna.Study, config: DictConfig, space: dict[str, str], fixed: list[str]
) -> None:
    """Name the objective after the monitor and record the study's recipe as user attributes
    (re-recorded by every invocation: the command is the latest one that ran the study)."""
    monitor = str(config.training.monitor)
    if study.metric_names != [monitor]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([monitor])
    sweeper = config.hydra.sweeper
    attrs: dict[str, Any] = {
        "dataset": str(config.dataset.name),
        "model": str(config.model.name),
        "search_space": space,  # each parameter as the override that searches it
        "fixed_overrides": list(fixed),
        "pruner": _plain(sweeper.get("pruner")),
        "sampler": _plain(sweeper.get("sampler")),
        "command": shlex.join(["python", "-m", "orchard_app", *sys.argv[1:]]),
    }
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def _plain(node: Any) -> Any:
    """A pruner or sampler config as plain JSON (its warm-up resolved); null stays null."""
    if node is None:
        return None
    return OmegaConf.to_container(node, resolve=True)
