"""MiniCNN: ~110k parameters, the fast CPU baseline (tens of seconds per MedMNIST epoch)."""

from __future__ import annotations

from torch import nn


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class MiniCNN(nn.Module):
    def __init__(self, in_chans: int, num_classes: int, dropout: float = 0.0, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_conv(in_chans, w), nn.MaxPool2d(2),
            *_conv(w, 2 * w), *_conv(2 * w, 2 * w), nn.MaxPool2d(2),
            *_conv(2 * w, 3 * w),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(3 * w, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def build_mini_cnn(
    cfg, in_chans: int, num_classes: int, resolution: int | None = None, exportable: bool = False
) -> nn.Module:
    """Any input side from 4 px up: two max-pools, then global average pooling."""
    return MiniCNN(in_chans, num_classes, dropout=float(cfg.dropout), **dict(cfg.params))
