"""The run (or sweep) directory a launch writes to, claimed before Hydra uses it.

`${orchard_unique:<path>}` in conf/config.yaml resolves to `<path>`, or `<path>-2`, `-3`, ...
when that is taken: an exclusive mkdir, so two runs of one config started in the same second
never share a directory. The entry point (`python -m orchard_app`) registers `claim_once` as
that resolver; config/ only names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path

from orchard_app.atomic import atomic_write
from orchard_app.distributed.rank import ProcessRank, process_rank

CLAIMS_DIR = ".claims"  # in the top output folder: the main process's notes for the others
CLAIM_WAIT_SECONDS = 120
_STARTED = time.time()
_claimed: dict[str, str] = {}


def claim_unique_dir(path: str) -> str:
    """Create `path` (or `path-2`, `path-3`, ...) with an exclusive mkdir and return it."""
    base = Path(path)
    base.parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while True:
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
            return str(candidate)
        except FileExistsError:
            n += 1


def claim_once(path: str) -> str:
    """`claim_unique_dir`, once per process and path: OmegaConf's resolver cache lives on one
    config object, and Hydra resolves the run/sweep dir on copies too (the submitit launcher
    resolves `${hydra.sweep.dir}` in its own node), which would otherwise claim a second dir.

    In a multi-process launch (torchrun, several SLURM tasks) only the main process claims;
    the others use the directory it claimed, so a run has one directory."""
    if path not in _claimed:
        process = process_rank()
        if process.world_size == 1:
            _claimed[path] = claim_unique_dir(path)
        else:
            _claimed[path] = _shared_claim(path, process, len(_claimed))
    return _claimed[path]


def _shared_claim(path: str, process: ProcessRank, index: int) -> str:
    """Rank 0 claims `path` and leaves a note `<top folder>/.claims/<launch id, index>.json`
    that the other ranks wait for (their clocks may name another second). The note must be
    younger than the reader process: a launch id can repeat (torchrun's default always does)."""
    top = Path(path).parent if Path(path).is_absolute() else Path(Path(path).parts[0])
    digest = hashlib.blake2b(f"{process.launch_id}-{index}".encode(), digest_size=8).hexdigest()
    note = top / CLAIMS_DIR / f"{digest}.json"
    if process.is_main:
        claimed = claim_unique_dir(path)
        note.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(note, json.dumps({"dir": claimed, "created": time.time()}))
        return claimed
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            found = json.loads(note.read_text())
            if found["created"] >= _STARTED - 60:
                return str(found["dir"])
        time.sleep(0.1)
    raise RuntimeError(
        f"rank {process.rank} waited {CLAIM_WAIT_SECONDS} s for rank 0 to claim the run "
        f"directory ({note}); is rank 0 running with the same working directory?"
    )


def drop_unused_claims() -> None:
    """Remove the directories this process claimed and never wrote to (an aborted start)."""
    for path in _claimed.values():
        with contextlib.suppress(OSError):
            Path(path).rmdir()  # only when empty
