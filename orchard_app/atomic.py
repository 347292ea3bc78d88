"""Atomic file writes, in one place: write a temporary file in the target's directory, then
`os.replace` it over the target, so a reader sees the old file or the new one, never half.

The temp name is unique per process and call (`.<name>.<pid>.<random>.tmp`), so two processes
(array tasks, DDP ranks) writing the same target never share a temp file; on any failure
(disk full, a signal) the temp file is removed. Hand-written rather than a library: it is ten
lines, and every writer (checkpoints, provenance, caches, memo files) needs exactly this.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path


def temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")


def remove_stale_temp_files(directory: Path) -> None:
    """Remove the temp files under `directory` whose writer (the PID in the name) is dead."""
    for tmp in Path(directory).rglob(".*.tmp"):
        if (m := re.fullmatch(r"\..+\.(\d+)\.[0-9a-f]{6}\.tmp", tmp.name)) and not _alive(
            int(m[1])
        ):
            with contextlib.suppress(OSError):
                tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write to; on success it replaces `path`, on failure it is removed."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write(path: str | os.PathLike, data: str | bytes) -> None:
    """Write text (UTF-8) or bytes to `path` atomically."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
