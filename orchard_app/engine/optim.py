"""Optimisers and learning-rate schedules from `cfg.optimizer` / `cfg.scheduler`.

Weight decay skips biases and normalisation weights (1-D parameters), the usual practice.
Each schedule says when it steps: every batch ("step"), every epoch ("epoch"), or on the
monitored validation value ("plateau").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler


def build_optimizer(model: torch.nn.Module, opt) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(opt.weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    lr = float(opt.lr)
    if opt.name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=float(opt.momentum), nesterov=bool(opt.nesterov)
        )
    optim_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt.name]
    return optim_cls(groups, lr=lr, betas=tuple(float(b) for b in opt.betas))


class WarmupCosine:
    """LR factor: linear warmup from ~0, then cosine decay to min_lr/lr. A class, not a lambda,
    so LambdaLR's state_dict (and with it the checkpoint) carries its parameters."""

    def __init__(self, total_steps: int, warmup_steps: int, floor: float):
        self.total, self.warmup, self.floor = total_steps, warmup_steps, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class Schedule:
    scheduler: object | None
    interval: str  # "step" | "epoch" | "plateau" | "none"

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def build_schedule(
    optimizer, sch, lr: float, epochs: int, steps_per_epoch: int, mode: str
) -> Schedule:
    total = epochs * steps_per_epoch
    warmup = int(round(float(sch.warmup_epochs) * steps_per_epoch))
    if sch.name == "cosine":
        factor = WarmupCosine(total, warmup, float(sch.min_lr) / lr)
        return Schedule(lr_scheduler.LambdaLR(optimizer, factor), "step")
    if sch.name == "onecycle":
        pct = float(sch.warmup_epochs) / epochs if sch.warmup_epochs else 0.3
        max_lr = float(sch.max_lr) if sch.max_lr is not None else lr
        return Schedule(
            lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct),
            "step",
        )
    if sch.name == "multistep":  # the MedMNIST protocol: x0.1 at 50% and 75% of the epochs
        milestones = sorted({max(1, round(f * epochs)) for f in sch.milestones})
        return Schedule(
            lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=float(sch.gamma)),
            "epoch",
        )
    if sch.name == "step":
        return Schedule(
            lr_scheduler.StepLR(optimizer, step_size=int(sch.step_size), gamma=float(sch.gamma)),
            "epoch",
        )
    if sch.name == "plateau":
        plateau = lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode=mode,
            factor=float(sch.gamma),
            patience=int(sch.patience),
            min_lr=float(sch.min_lr),
        )
        return Schedule(plateau, "plateau")
    return Schedule(None, "none")
