"""Which way `training.monitor` improves. Here, not in the engine, so that a sweeper layer can
read the direction without importing torch."""

from __future__ import annotations

from orchard_app.config.choices import Direction


def monitor_direction(monitor: str, mode: str = "auto") -> Direction:
    """`mode` when it is min or max; for auto, min for a loss and max for any other metric."""
    if mode == "min" or mode == "max":
        return mode
    if mode != "auto":
        raise ValueError(f"monitor mode {mode!r}: expected auto, min or max")
    return "min" if str(monitor).endswith("loss") else "max"


def direction_of(cfg) -> Direction:
    """The direction of a composed config's `training.monitor`."""
    return monitor_direction(cfg.training.monitor, cfg.training.monitor_mode)
