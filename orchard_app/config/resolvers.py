"""OmegaConf resolvers used in run-directory names: the config hash, path-safe name parts and a
collision-free claim."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from orchard_app.atomic import atomic_write
from orchard_app.distributed.rank import process_rank

SHORT_HASH_LEN = 6
SLUG_MAX_LEN = 64

# Keys that only locate things on this machine or only affect bookkeeping: the same experiment
# run elsewhere, tracked elsewhere or resumed keeps its hash (dotted paths; a group drops whole).
MACHINE_KEYS = (
    "dataset.root",
    "dataset.cache_dir",
    "dataset.download",
    "dataset.mirror",
    "tracking",
    "training.resume",
    "hpo",  # how the study around a run searches, not the run itself
    "export",  # what is done with the trained model afterwards (exports/), not the training
)


def config_hash(cfg: DictConfig) -> str:
    """BLAKE2b of the resolved job config (`hydra` node and MACHINE_KEYS excluded), as hex."""
    return hash_container(resolved_container(cfg))


def hash_container(job: dict[str, Any]) -> str:
    """BLAKE2b of `experiment_view(job)` for an already resolved config, as hex."""
    blob = json.dumps(experiment_view(job), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def experiment_view(job: dict[str, Any]) -> dict[str, Any]:
    """A copy of a resolved config without MACHINE_KEYS: what identifies the experiment."""
    view = copy.deepcopy(job)
    for key in MACHINE_KEYS:
        *parents, leaf = key.split(".")
        node: Any = view
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return view


def _short_hash(*, _root_: DictConfig) -> str:
    return config_hash(_root_)[:SHORT_HASH_LEN]


def slug(value: object) -> str:
    """A user-given name made safe as one path component: [A-Za-z0-9._+-] kept, anything else
    (`/` and `\\` too) turned into `_`, leading dots stripped, at most SLUG_MAX_LEN characters."""
    text = re.sub(r"[^A-Za-z0-9._+-]", "_", str(value)).lstrip(".")[:SLUG_MAX_LEN]
    return text or "_"


def claim_unique_dir(path: str) -> str:
    """Create `path` (or `path-2`, `path-3`, ...) with an exclusive mkdir and return it.

    Two runs of one config started in the same second would otherwise share a run dir; mkdir
    is atomic, so exactly one process wins each name. `_claim_once` makes Hydra's repeated
    look-ups of `hydra.run.dir` return the same claimed directory.
    """
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


_claimed: dict[str, str] = {}


def _claim_once(path: str) -> str:
    """`claim_unique_dir`, once per process and path: OmegaConf's resolver cache lives on one
    config object, and Hydra resolves the run/sweep dir on copies too (the submitit launcher
    resolves `${hydra.sweep.dir}` in its own node), which would otherwise claim a second dir.

    In a multi-process launch (torchrun, several SLURM tasks) only the main process claims;
    the others use the directory it claimed (`shared_claim`), so a run has one directory."""
    if path not in _claimed:
        process = process_rank()
        if process.world_size == 1:
            _claimed[path] = claim_unique_dir(path)
        else:
            _claimed[path] = shared_claim(path, process, len(_claimed))
    return _claimed[path]


CLAIM_WAIT_SECONDS = 120
_STARTED = time.time()


def shared_claim(path: str, process, index: int) -> str:
    """Rank 0 claims `path` and leaves a note `<top folder>/.claims/<launch id>-<index>.json`
    that the other ranks wait for. The note must be younger than the reader process (a launch
    id can repeat across launches: torchrun's default is the same every time)."""
    top = Path(Path(path).parts[0] if not Path(path).is_absolute() else Path(path).parent)
    digest = hashlib.blake2b(f"{process.launch_id}-{index}".encode(), digest_size=8).hexdigest()
    note = top / ".claims" / f"{digest}.json"
    if process.is_main:
        claimed = claim_unique_dir(path)
        note.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(note, json.dumps({"dir": claimed, "created": time.time()}))
        return claimed
    deadline = time.monotonic() + CLAIM_WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            found = json.loads(note.read_text())
            if found["created"] >= _STARTED - 60:
                return str(found["dir"])
        except (OSError, ValueError, KeyError):
            pass
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


def register_resolvers() -> None:
    OmegaConf.register_resolver("orchard_hash", _short_hash, replace=True)
    OmegaConf.register_resolver("orchard_slug", slug, replace=True)
    OmegaConf.register_resolver("orchard_unique", _claim_once, use_cache=True, replace=True)


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    keys = [k for k in cfg if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)  # type: ignore[return-value]
