"""OmegaConf resolvers used in run-directory names: the config hash and path-safe name parts
(the collision-free claim, `orchard_unique`, is orchard_app/rundir/claim.py's)."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, OmegaConf

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


def register_resolvers(claim: Callable[[str], str] | None = None) -> None:
    """The hash and slug resolvers; `claim` backs `${orchard_unique:<dir>}` (the entry point
    passes orchard_app.rundir.claim.claim_once; a composed config that never resolves its
    `hydra` node needs none)."""
    OmegaConf.register_resolver("orchard_hash", _short_hash, replace=True)
    OmegaConf.register_resolver("orchard_slug", slug, replace=True)
    OmegaConf.register_resolver("orchard_warmup", warmup_epochs, replace=True)
    if claim is not None:
        OmegaConf.register_resolver("orchard_unique", claim, use_cache=True, replace=True)


def warmup_epochs(epochs: int, fraction: float, least: int = 0) -> int:
    """`${orchard_warmup:${training.epochs},${hpo.warmup}}`: the epochs a pruner preset waits
    before pruning, a fraction of the trial's own length (rounded up), so that a longer trial
    gets a longer warm-up; at least `least` epochs."""
    return max(int(least), math.ceil(int(epochs) * float(fraction)))


def resolved_container(cfg: DictConfig) -> dict[str, Any]:
    keys = [k for k in cfg if k != "hydra"]
    return OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True)  # type: ignore[return-value]
