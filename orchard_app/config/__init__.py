"""Configuration: schemas (ConfigStore), resolvers and validation rules. No torch imports."""

from collections.abc import Callable
from pathlib import Path

from orchard_app.config.monitor import direction_of, monitor_direction
from orchard_app.config.resolvers import (
    MACHINE_KEYS,
    config_hash,
    experiment_view,
    register_resolvers,
)
from orchard_app.config.schema import register as register_schema

# conf/ sits beside the package in a checkout (installs are editable: `pip install -e .`).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def register(claim: Callable[[str], str] | None = None) -> None:
    """Make the schema and resolvers known to Hydra; safe to call more than once. `claim` is
    the run-dir claim behind `${orchard_unique:...}` (see `register_resolvers`)."""
    from omegaconf import OmegaConf

    from orchard_app.config.help import group_options

    register_schema()
    register_resolvers(claim)
    OmegaConf.register_resolver(  # --help's option lists (conf/config.yaml hydra.help)
        "orchard_options", lambda group, default=None: group_options(CONF_DIR, group, default),
        replace=True,
    )  # fmt: skip


def null_group_choices(argv: list[str]) -> list[str]:
    """The `group=...,null` sweeps in `argv`, which Hydra ends in a traceback: `<group>=none`
    is the app's "no preset" option (conf/experiment/none.yaml)."""
    return [a for a in argv if "=" in a and (CONF_DIR / a.split("=", 1)[0].lstrip("+~")).is_dir()
            and "null" in a.split("=", 1)[1].split(",")]  # fmt: skip


def compose(*overrides: str, config_name: str = "config", return_hydra_config: bool = False):
    """The config `python -m orchard_app <overrides>` composes from conf/ (tests, bench, saved
    runs); with `return_hydra_config`, its `hydra` node too, as the launcher process sees it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return hydra_compose(config_name, list(overrides), return_hydra_config)


__all__ = [
    "CONF_DIR",
    "MACHINE_KEYS",
    "compose",
    "config_hash",
    "direction_of",
    "experiment_view",
    "monitor_direction",
    "null_group_choices",
    "register",
]
