"""The one conversion from a stored image to the model's input, shared by the training pipeline
and the exported ONNX graph (so a deployment cannot get it wrong):

    uint8 (or float in [0, 255]) N x C x H x W  ->  / 255  ->  grey to 3 channels when the model
    takes RGB (dataset.force_rgb)  ->  (x - mean) / std

Training augments between the two halves (`scale`, then `normalise`); evaluation and the
exported graph run both back to back (`forward`).
"""

from __future__ import annotations

import torch
from torch import nn


class Preprocess(nn.Module):
    def __init__(self, mean: float, std: float, channels: int, in_chans: int):
        super().__init__()
        self.mean, self.std = float(mean), float(std)  # Python floats: constants in the graph
        self.channels, self.in_chans = int(channels), int(in_chans)
        self.expand = self.in_chans == 3 and self.channels == 1

    @classmethod
    def for_data(cls, ds_cfg, info) -> Preprocess:
        """From `cfg.dataset` (mean, std) and the dataset's info (stored and model channels)."""
        return cls(float(ds_cfg.mean), float(ds_cfg.std), info.channels, info.in_chans)

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Raw pixels (uint8, or float in [0, 255]) -> float32 in [0, 1], channels expanded."""
        # uint8 is converted into a new tensor, divided in place; float32 input is the caller's
        x = x / 255.0 if x.dtype == torch.float32 else x.to(dtype=torch.float32).div_(255.0)
        if self.expand:
            x = x.expand(-1, 3, -1, -1)
        return x

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.scale(x))

    def describe(self) -> dict[str, object]:
        """What the graph does to its input, for the exported model's metadata."""
        return {
            "input": "uint8 or float in [0, 255]",
            "scale": "x / 255",
            "expand_channels": f"{self.channels} -> 3" if self.expand else None,
            "normalise": f"(x - {self.mean}) / {self.std}",
            "mean": self.mean,
            "std": self.std,
        }

    def extra_repr(self) -> str:
        expand = ", 1->3 channels" if self.expand else ""
        return f"/255{expand}, (x - {self.mean}) / {self.std}"
