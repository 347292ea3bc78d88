"""The loss recipe: cross-entropy (BCE for multi-label) with label smoothing, class weights and
mixup. Training uses the recipe; validation and test losses are the plain loss."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LossRecipe:
    multilabel: bool
    num_classes: int
    train_labels: torch.Tensor  # what the class-weighted denominator of a batch is read from
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    class_weight: torch.Tensor | None = None  # per class (BCE: pos_weight per label)

    @classmethod
    def for_data(cls, data, settings, device: torch.device) -> LossRecipe:
        info = data.info
        weight = class_weights(data, device) if settings.class_weighted_loss else None
        return cls(info.multilabel, info.num_classes, data.train.labels, settings.label_smoothing,
                   settings.mixup_alpha, weight)  # fmt: skip

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, train: bool,
        denominator: float | None = None, world_size: int = 1,
    ) -> torch.Tensor:  # fmt: skip
        """The mean loss; with `denominator` (one process's share of a global batch), this
        share's summed loss / the whole batch's mean denominator x the number of processes:
        averaged over the processes (as DDP averages gradients), the whole batch's mean loss,
        even for unequal shares and class weights."""
        smoothing = self.label_smoothing if train else 0.0
        weight = self.class_weight if train else None
        reduction = "mean" if denominator is None else "sum"
        if self.multilabel:
            target = target.float()
            if smoothing:
                target = target * (1 - smoothing) + smoothing / 2
            loss = F.binary_cross_entropy_with_logits(
                logits, target, pos_weight=weight, reduction=reduction
            )
        else:
            loss = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing,
                                   reduction=reduction)  # fmt: skip
        return loss if denominator is None else loss * (world_size / denominator)

    def denominator(self, idx: torch.Tensor) -> float:
        """What the mean-reduced training loss of the whole batch `idx` divides by."""
        if self.multilabel:
            return float(len(idx) * self.num_classes)
        if self.class_weight is None or self.mixup_alpha > 0:  # soft targets: per sample
            return float(len(idx))
        y = self.train_labels[idx.to(self.train_labels.device)].view(-1)
        return float(self.class_weight[y.to(self.class_weight.device)].sum())

    def mixup(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        lam = float(np.random.default_rng(seed).beta(self.mixup_alpha, self.mixup_alpha))
        perm = torch.randperm(x.shape[0], generator=gen).to(x.device)
        target = y.float() if self.multilabel else F.one_hot(y, self.num_classes).float()
        return lam * x + (1 - lam) * x[perm], lam * target + (1 - lam) * target[perm]


def class_weights(data, device: torch.device) -> torch.Tensor:
    counts = data.class_counts().clamp(min=1)
    if data.info.multilabel:  # BCE pos_weight: negatives per positive, per label
        return ((len(data.train) - counts) / counts).to(device)
    return (counts.sum() / (len(counts) * counts)).to(device)
