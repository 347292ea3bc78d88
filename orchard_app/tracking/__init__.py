"""Tracking and provenance: run directory (lock, provenance.json), logging, experiment trackers.

`open_tracker(cfg, ...)` returns the tracker for `cfg.tracking.name`; `tracking=none` returns a
NullTracker and imports nothing from MLflow. A tracker is a context manager with two hooks:
`on_epoch_end(record, engine)` (an Engine callback) and `log_results(summary, run_dir)`; leaving
the context ends the tracked run with the outcome (completed / failed / interrupted).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class NullTracker:
    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def on_epoch_end(self, record: dict[str, Any], engine: Any) -> None:
        return None

    def log_results(self, summary: dict[str, Any], run_dir: Path) -> None:
        return None


def open_tracker(cfg, run_dir: Path, config: dict[str, Any], config_hash: str):
    if cfg.tracking.name == "none":
        return NullTracker()
    raise NotImplementedError(f"tracking={cfg.tracking.name} is not implemented yet")
