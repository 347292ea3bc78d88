"""Configuration: schemas (ConfigStore), resolvers and validation rules. No torch imports."""

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


def register() -> None:
    """Make the schema and resolvers known to Hydra; safe to call more than once."""
    register_schema()
    register_resolvers()


__all__ = [
    "CONF_DIR",
    "MACHINE_KEYS",
    "config_hash",
    "direction_of",
    "experiment_view",
    "monitor_direction",
    "register",
]
