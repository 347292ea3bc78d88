"""What survives an interruption: the per-epoch records and `TrainState`, and how they go into
last.pt together with the model, optimiser, schedule, scaler and RNG states (`capture`) and
come back (`restore`), so a resumed run (even one stopped mid-epoch) continues exactly where
it stopped. last.pt holds plain data only (safe to load with weights_only)."""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from orchard_app.engine.checkpoint import check_compatible, load_checkpoint
from orchard_app.errors import CheckpointError, cause

log = logging.getLogger("orchard_app.engine")


@dataclass(frozen=True, eq=False)
class EpochRecord(Mapping):
    """One epoch's numbers, as callbacks get them and metrics.json lists them; read by key too
    (`record[engine.monitor]`), so it stands wherever the plain dict stood."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_balanced_accuracy: float
    val_auc: float
    val_macro_f1: float
    lr: float
    seconds: float
    train_seconds: float
    val_seconds: float

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.__dataclass_fields__)

    def __len__(self) -> int:
        return len(self.__dataclass_fields__)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # completed steps of the current epoch (non-zero only mid-epoch)
    order: torch.Tensor | None = None  # sample order of the current epoch, while mid-epoch
    epoch_losses: torch.Tensor | None = None  # per-step training losses of the current epoch
    best_value: float | None = None
    best_epoch: int | None = None
    best_loss: float = math.inf  # val loss at the best epoch (breaks ties on the monitor)
    bad_epochs: int = 0  # epochs since the monitored value last improved
    stopped_early: bool = False
    history: list[EpochRecord] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "history": [r.to_dict() for r in self.history],
                "epoch_losses": None if self.epoch_losses is None else self.epoch_losses.cpu()}  # fmt: skip

    @classmethod
    def from_dict(cls, st: dict[str, Any], device: torch.device) -> TrainState:
        losses = st["epoch_losses"]
        return cls(**{f.name: st[f.name] for f in dataclasses.fields(cls)} | {
            "history": [EpochRecord(**h) for h in st["history"]],
            "epoch_losses": None if losses is None else losses.to(device)})  # fmt: skip


def capture(engine) -> dict[str, Any]:
    """last.pt's payload: everything `restore` needs to continue bit for bit."""
    payload = {
        "shape": engine.shape, "model": engine.model.state_dict(),
        "best_model": engine.best_model_state, "optimizer": engine.optimizer.state_dict(),
        "schedule": engine.schedule.state_dict(), "scaler": engine.scaler.state_dict(),
        "state": engine.state.to_dict(), "rng": rng_state(engine.gen),
    }  # fmt: skip
    if engine.group.world_size > 1:  # every process's own torch RNG (dropout masks)
        payload["rng_ranks"] = engine.group.all_gather_object(payload["rng"])
    return payload


def restore(engine, path: Path) -> None:
    """Continue from a last.pt: refused when it is not this run's kind of checkpoint, when
    the epoch's shape changed, or when it is incomplete; optimizer settings given now win."""
    ckpt = load_checkpoint(path)
    check_compatible(ckpt["fingerprint"], engine.checkpoints.fingerprint, path)
    if "optimizer" not in ckpt:
        raise CheckpointError(
            f"{path} holds model weights only (a best.pt); resume from last.pt of the same run"
        )
    try:
        st = ckpt["state"]
        check_shape(engine, ckpt.get("shape") or {}, st["step"], path)
        engine.model.load_state_dict(ckpt["model"])
        fresh = hyper_params(engine.optimizer)
        engine.optimizer.load_state_dict(ckpt["optimizer"])
        engine.schedule.load_state_dict(ckpt["schedule"])
        applied = apply_hyper_params(engine.optimizer, engine.schedule, fresh)
        engine.scaler.load_state_dict(ckpt["scaler"])
        best_model = ckpt["best_model"]
        engine.state = TrainState.from_dict(st, engine.device)
        ranks = ckpt.get("rng_ranks") or []
        own = ranks[engine.group.rank] if len(ranks) == engine.group.world_size else ckpt["rng"]
        set_rng_state(own, engine.gen)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"{path} is not a complete checkpoint of this run ({cause(e, most=10_000)}).\n"
            "  Resume from the last.pt that this run wrote, or drop training.resume to start fresh."
        ) from None
    engine.best_model_state = best_model
    engine.resumed_from = str(path)
    where = f"epoch {st['epoch'] + 1}, step {st['step']}" if st["step"] else f"the end of epoch {st['epoch']}"  # fmt: skip
    log.info("resumed from %s at %s", path, where)
    for key, (old, new) in applied.items():
        log.warning("resume: optimizer.%s=%s applied to the restored optimizer (the checkpoint "
                    "had %s)", key, new, old)  # fmt: skip
    engine.resumed_config = ckpt.get("config") or {}


def check_shape(engine, saved: dict[str, int], step: int, path: Path) -> None:
    """Settings that fix the epoch's steps must match mid-epoch; a schedule that depends on
    the number of epochs or steps must see the same numbers at any point."""
    keys = list(engine.schedule.depends_on)
    if step:
        keys += ["train_samples", "batch_size", "steps_per_epoch"]
    now = engine.shape
    changed = [k for k in dict.fromkeys(keys) if k in saved and saved[k] != now[k]]
    if changed:
        names = {"train_samples": "training samples (dataset.max_samples)",
                 "batch_size": "training.batch_size", "epochs": "training.epochs",
                 "steps_per_epoch": "steps per epoch"}  # fmt: skip
        diffs = "; ".join(
            f"{names[k]}: {saved[k]} in the checkpoint, {now[k]} now" for k in changed
        )
        where = "in the middle of an epoch" if step else f"with scheduler {engine.schedule.name}"
        raise CheckpointError(
            f"{path} cannot be resumed {where} with these settings: {diffs}.\n"
            "  Resume with the checkpoint's values, or drop training.resume to start fresh."
        )


def hyper_params(optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    keys = ("initial_lr", "lr", "weight_decay", "momentum", "nesterov", "betas")
    return [{k: g[k] for k in keys if k in g} for g in optimizer.param_groups]


def apply_hyper_params(optimizer, schedule, fresh: list[dict]) -> dict[str, tuple]:
    """After loading an optimizer's state, put back the hyper-parameters of the config in
    effect now (so `optimizer.lr=...` on resume does what it says); the learning rate keeps
    the schedule's position: every lr-like value is scaled by new base / old base."""
    applied: dict[str, tuple] = {}
    for i, (group, want) in enumerate(zip(optimizer.param_groups, fresh, strict=True)):
        old_base = group.get("initial_lr", group["lr"])
        new_base = want.get("initial_lr", want["lr"])
        if old_base != new_base and old_base > 0:
            ratio = new_base / old_base
            for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                if key in group:
                    group[key] = group[key] * ratio
            if schedule.scheduler is not None and hasattr(schedule.scheduler, "base_lrs"):
                schedule.scheduler.base_lrs[i] *= ratio
            applied.setdefault("lr", (old_base, new_base))
        for key in ("weight_decay", "momentum", "nesterov", "betas"):
            if key in want and group.get(key) != want[key]:
                applied.setdefault(key, (group[key], want[key]))
                group[key] = want[key]
    return applied


def rng_state(gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    key, pos = np_state["state"]["key"].tolist(), int(np_state["state"]["pos"])
    return {
        "data": gen.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": key, "pos": pos}},
    }


def set_rng_state(rng: dict[str, Any], gen: torch.Generator) -> None:
    gen.set_state(rng["data"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    st = dict(rng["numpy"])
    st["state"] = {"key": np.array(st["state"]["key"], dtype=np.uint32), "pos": st["state"]["pos"]}
    np.random.set_state(st)
