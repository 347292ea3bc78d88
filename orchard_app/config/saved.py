"""Compose a config from a run's saved one, the way the command line composes conf/:
`conf/config.yaml` (schema, groups) first, then the saved config over it, then command-line
overrides (`export.opset=19`). A key or type the schema refuses is a ConfigError, as when
training. Used by `python -m orchard_app.export`. No torch imports."""

from __future__ import annotations

import itertools
from typing import Any

from omegaconf import DictConfig

from orchard_app.errors import ConfigError

_names = itertools.count()


def compose_saved(saved: dict[str, Any], overrides: list[str], source: str) -> DictConfig:
    """The saved config `saved` (from `source`, named in errors) with `overrides` applied."""
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from orchard_app.config import compose

    name = f"_orchard_saved_run_{next(_names)}"
    node = {"defaults": ["config", "_self_"], **{k: v for k, v in saved.items() if k != "hydra"}}
    ConfigStore.instance().store(name=name, node=node)
    try:
        return compose(*overrides, config_name=name)
    except (HydraException, OmegaConfBaseException) as e:
        problem = " ".join(str(e).split())
        given = " ".join(overrides) or "none"
        raise ConfigError(
            [f"{problem} (the run's config from {source}; overrides: {given})"]
        ) from None
