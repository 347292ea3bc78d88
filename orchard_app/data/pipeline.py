"""Batches for training and evaluation: gather uint8 rows, move them to the device, then
convert, augment and normalise the whole batch there.

The engine owns the sample order (`epoch_order`) and the generator, so it can checkpoint and
resume mid-epoch exactly; this module only turns index batches into tensors.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from orchard_app.data.augment import BatchAugment
from orchard_app.data.dataset import DataBundle, Split
from orchard_app.data.preprocess import Preprocess

RESIDENT_MAX_BYTES = 4 << 30  # on CUDA, splits below this are copied to the GPU once


class BatchPipeline:
    def __init__(self, data: DataBundle, ds_cfg, device: torch.device, channels_last: bool = False):
        self.data = data
        self.device = device
        self.preprocess = Preprocess.for_data(ds_cfg, data.info)  # the exported graph's, too
        self.augment = BatchAugment(ds_cfg.augment, data.info.in_chans)
        self.balanced = bool(ds_cfg.balanced_sampler)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if device.type == "cuda":
            for split in (data.train, data.val, data.test):
                images = split.images
                if isinstance(images, torch.Tensor) and images.numel() < RESIDENT_MAX_BYTES:
                    split.images = images.to(device)
                    split.labels = split.labels.to(device)

    def epoch_order(self, g: torch.Generator) -> torch.Tensor:
        """This epoch's training sample order (class-balanced draws if dataset.balanced_sampler)."""
        n = len(self.data.train)
        if not self.balanced:
            return torch.randperm(n, generator=g)
        y = self.data.train.labels.cpu()
        counts = self.data.class_counts().cpu().clamp(min=1)
        if self.data.info.multilabel:  # weight a sample by its rarest positive label
            weights = (y / counts).max(1).values.clamp(min=1.0 / n)
        else:
            weights = 1.0 / counts[y]
        return torch.multinomial(weights, n, replacement=True, generator=g)

    def train_batch(
        self, idx: torch.Tensor, g: torch.Generator, part: slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch of training samples `idx`, augmented with parameters drawn from `g` for
        all of them. With `part` (positions in `idx`) only those samples are built: one
        process's share of a global batch, the same tensors as building all and slicing."""
        draws = self.augment.draw(len(idx), g) if self.augment.active else None
        if part is not None:
            idx = idx[part]
            draws = None if draws is None else {k: v[part] for k, v in draws.items()}
        x, y = self._gather(self.data.train, idx)
        x = self.preprocess.scale(x)
        if draws is not None:
            x = self.augment.apply(x, draws)
        return self._normalise(x), y

    def eval_batches(
        self, split: Split, batch_size: int, part: slice | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of the split in order; with `part`, of those sample positions only."""
        first, end = (0, len(split)) if part is None else (part.start, part.stop)
        for start in range(first, end, batch_size):
            idx = torch.arange(start, min(start + batch_size, end))
            x, y = self._gather(split, idx)
            yield self._normalise(self.preprocess.scale(x)), y

    def _gather(self, split: Split, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        to = {"device": self.device, "non_blocking": self.device.type == "cuda"}
        return split.rows(idx).to(**to), split.labels[idx.to(split.labels.device)].to(**to)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return self.preprocess.normalise(x).contiguous(memory_format=self.memory_format)
