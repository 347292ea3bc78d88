"""Checkpoints: atomic writes, safe loads (weights_only) and a fingerprint check on resume.

A fingerprint (architecture, input shape, classes, task) travels in every file, so a checkpoint
from another model or dataset is refused with a message naming both sides before any weight is
copied into the model.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from orchard_app.atomic import atomic_path
from orchard_app.errors import CheckpointError, StorageError, cause
from orchard_app.rundir.layout import LAST_CHECKPOINT

FORMAT = 1


class Checkpointer:
    """Where a run's checkpoints go, and what travels in each (fingerprint, resolved config).

    Disabled on every process but the main one of a multi-process run: the engine calls it the
    same way everywhere, and only one process writes.
    """

    def __init__(self, directory: Path, fingerprint: dict[str, Any], config: dict[str, Any],
                 enabled: bool = True):  # fmt: skip
        self.directory, self.fingerprint, self.config = Path(directory), fingerprint, config
        self.enabled = enabled

    @property
    def last(self) -> Path:
        return self.directory / LAST_CHECKPOINT

    def save(self, name: str, payload: dict[str, Any]) -> None:
        if self.enabled:
            save_checkpoint(
                self.directory / name,
                {"fingerprint": self.fingerprint, "config": self.config, **payload},
            )


def fingerprint(model_cfg, info, model: torch.nn.Module) -> dict[str, Any]:
    return {
        "model": str(model_cfg.name),
        "arch": str(model_cfg.arch),
        "in_chans": int(info.in_chans),
        "resolution": int(info.resolution),
        "num_classes": int(info.num_classes),
        "task": str(info.task),
        "dataset": str(info.name),
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }


def describe(fp: dict[str, Any]) -> str:
    return (
        f"model={fp['model']} ({fp['parameters']:,} parameters) for {fp['num_classes']} "
        f"{'labels' if fp['task'] == 'multi-label' else 'classes'}, input {fp['in_chans']}x"
        f"{fp['resolution']}x{fp['resolution']} (dataset {fp['dataset']})"
    )


def check_compatible(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    keys = ("arch", "model", "dataset", "in_chans", "resolution", "num_classes", "task",
            "parameters")  # fmt: skip
    diffs = [k for k in keys if saved.get(k) != current.get(k)]
    if diffs:
        raise CheckpointError(
            f"{path} does not fit this run ({', '.join(diffs)} differ):\n"
            f"  checkpoint: {describe(saved)}\n"
            f"  this run:   {describe(current)}\n"
            "  Resume with the model and dataset that wrote it, or drop training.resume to start fresh."
        )


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file in the same directory, then rename: never a half-written file;
    a full disk or a read-only directory is one clear error, with the temp file removed.

    Serialised in memory first: torch's own file writer turns a full disk into assorted
    RuntimeErrors ("iostream error", "unexpected pos"), Python's file write into an OSError."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
    except OSError as e:
        raise StorageError(path, e) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except pickle.UnpicklingError as e:
        if "GLOBAL" not in str(e):  # not a pickle at all: quote torch's cause, not its advice
            raise CheckpointError(
                f"{path} is not a readable torch checkpoint ({_cause(e)})"
            ) from None
        # Python objects that the safe load refuses. torch's own text suggests
        # weights_only=False, exactly the unsafe fix: it is never passed on.
        blocked = re.search(r"unsupported GLOBAL (\S+)", str(e))
        what = f" (it asks to run {blocked.group(1)})" if blocked else ""
        raise CheckpointError(
            f"{path} holds Python objects beyond tensors and plain data{what}, so it is not an "
            "orchard_app checkpoint and was refused unread. orchard_app checkpoints hold only "
            "weights and numbers; resume from the last.pt a run of orchard_app wrote."
        ) from None
    except Exception as e:  # truncated, or not a torch file at all
        raise CheckpointError(
            f"{path} cannot be read as an orchard_app checkpoint ({cause(e, most=10_000)})"
        ) from None
    if not isinstance(ckpt, dict) or "fingerprint" not in ckpt or "model" not in ckpt:
        raise CheckpointError(
            f"{path} is not an orchard_app checkpoint (no fingerprint/model entries)"
        )
    return ckpt


def _cause(e: BaseException) -> str:
    """torch's weights-only failure is its advice paragraph, then the cause: keep the cause."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    causes = [line for line in lines if "weights_only" not in line and "torch.load" not in line]
    return causes[-1] if causes else type(e).__name__
