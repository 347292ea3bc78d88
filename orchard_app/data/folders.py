"""The folders a user points us at (dataset.root, dataset.cache_dir): checked where first
used, so a file in their place or a missing permission is named as such, not reported as a
download failure or a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from orchard_app.errors import DataError

SETTINGS = {"dataset.root": "ORCHARD_DATA_DIR", "dataset.cache_dir": "ORCHARD_CACHE_DIR"}


def not_a_file(path: Path, setting: str) -> None:
    """Refuse a path that exists but is not a folder."""
    if path.exists() and not path.is_dir():
        raise DataError(f"{setting}={path} is a file, not a directory; {_fix(setting)}")


def writable_dir(path: Path, setting: str) -> Path:
    """Create `path` if needed and make sure this user can write in it."""
    not_a_file(path, setting)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"{setting}={path} cannot be created ({e.strerror}: {e.filename}); {_fix(setting)}"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DataError(f"{setting}={path} is not writable by this user; {_fix(setting)}")
    return path


def _fix(setting: str) -> str:
    return f"point {SETTINGS[setting]}/{setting} at a folder you can write to"
