"""What is exported: the raw stored image in, probabilities out, with the training
preprocessing (the data pipeline's own `Preprocess` module) and the output activation inside,
so a deployment has nothing to re-implement."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn


class Deployable(nn.Module):
    """uint8 (or float in [0, 255]) N x C x H x W -> probabilities N x classes: softmax over
    classes, or one sigmoid per label for a multi-label task (as the evaluation computes them)."""

    def __init__(self, preprocess: nn.Module, model: nn.Module, multilabel: bool):
        super().__init__()
        self.preprocess, self.model, self.multilabel = preprocess, model, bool(multilabel)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.preprocess(image)).float()
        if self.multilabel:
            return torch.sigmoid(logits)
        probs = torch.softmax(logits, 1)  # renormalised: INT8 rounding leaves sums of 0.98-1.01
        return probs / probs.sum(1, keepdim=True)


def torch_predictor(module: nn.Module, device="cpu") -> Callable[[np.ndarray], np.ndarray]:
    """The module (on `device`) as a predictor on numpy batches (what an onnxruntime session
    is, too)."""
    module.eval()

    def predict(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch).to(device)).cpu().numpy()

    return predict
