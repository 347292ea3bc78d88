"""Optimisers and learning-rate schedules from `cfg.optimizer` / `cfg.scheduler`.

Weight decay skips biases, normalisation weights and the parameters a model names in
`no_weight_decay()` (ViT's position embedding and class token), as timm builds its groups.
Each schedule says when it steps: every batch ("step"), every epoch ("epoch"), or on the
monitored validation value ("plateau").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim import lr_scheduler


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """[decayed, not decayed], by timm's rule (1-D parameters and `no_weight_decay()` names)."""
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    # Split with a non-zero decay so the two groups exist even at weight_decay=0 (a resume
    # with another weight decay must find the same groups in the optimizer's state).
    split = param_groups_weight_decay(model, 1.0, no_weight_decay_list=skip)
    by_decay = {g["weight_decay"] > 0: g["params"] for g in split}
    return [{"params": by_decay.get(True, []), "weight_decay": weight_decay},
            {"params": by_decay.get(False, []), "weight_decay": 0.0}]  # fmt: skip


def build_optimizer(model: torch.nn.Module, opt) -> torch.optim.Optimizer:
    groups = parameter_groups(model, float(opt.weight_decay))
    lr = float(opt.lr)
    if opt.name == "sgd":
        return torch.optim.SGD(
            groups, lr=lr, momentum=float(opt.momentum), nesterov=bool(opt.nesterov)
        )
    optim_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt.name]
    return optim_cls(groups, lr=lr, betas=tuple(float(b) for b in opt.betas))


BY_STEPS = ("epochs", "steps_per_epoch")


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
    name: str = "none"
    depends_on: tuple[str, ...] = ()  # run settings the schedule's course is computed from

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
        return Schedule(lr_scheduler.LambdaLR(optimizer, factor), "step", "cosine", BY_STEPS)
    if sch.name == "onecycle":
        pct = float(sch.warmup_epochs) / epochs if sch.warmup_epochs else 0.3
        max_lr = float(sch.max_lr) if sch.max_lr is not None else lr
        return Schedule(
            lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total, pct_start=pct),
            "step", "onecycle", BY_STEPS,
        )  # fmt: skip
    if sch.name == "multistep":  # the MedMNIST protocol: x0.1 at 50% and 75% of the epochs
        milestones = sorted({max(1, round(f * epochs)) for f in sch.milestones})
        return Schedule(
            lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=float(sch.gamma)),
            "epoch", "multistep", ("epochs",),
        )  # fmt: skip
    if sch.name == "step":
        return Schedule(
            lr_scheduler.StepLR(optimizer, step_size=int(sch.step_size), gamma=float(sch.gamma)),
            "epoch", "step",
        )  # fmt: skip
    if sch.name == "plateau":
        plateau = lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=float(sch.gamma),
                                                 patience=int(sch.patience), min_lr=float(sch.min_lr))  # fmt: skip
        return Schedule(plateau, "plateau", "plateau")
    return Schedule(None, "none")
