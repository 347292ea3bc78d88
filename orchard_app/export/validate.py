"""The numerical check: how far the exported model's probabilities are from PyTorch's, on random
inputs and on real test images, against `export.max_deviation`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from orchard_app.errors import ExportError

log = logging.getLogger("orchard_app.export")


def max_deviation(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Max absolute difference of two probability arrays of the same shape."""
    if reference.shape != candidate.shape:
        raise ExportError(
            f"the exported model returns shape {candidate.shape} where PyTorch returns "
            f"{reference.shape}; the export is broken (report it with the model name)"
        )
    return float(np.max(np.abs(reference.astype(np.float64) - candidate)))


def random_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """n uniform random uint8 images N x C x H x W (every pixel value, not only typical ones)."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@dataclass
class Deviation:
    random: float  # on `random_samples` random uint8 images
    test: float  # on every test image
    random_samples: int
    test_samples: int
    tolerance: float
    strict: bool

    @property
    def max(self) -> float:
        return max(self.random, self.test)

    @property
    def passed(self) -> bool:
        return self.max <= self.tolerance

    def record(self) -> dict:
        return {**asdict(self), "max": self.max, "passed": self.passed}

    def describe(self) -> str:
        return (
            f"max |p_onnx - p_torch| = {self.max:.3g} (random images {self.random:.3g} on "
            f"{self.random_samples}, test images {self.test:.3g} on {self.test_samples}); "
            f"export.max_deviation={self.tolerance:g}"
        )


def check_deviation(deviation: Deviation, what: str = "model.onnx") -> None:
    """Fail (strict) or warn loudly when the deviation exceeds the tolerance."""
    if deviation.passed:
        log.info("export: numerical check passed: %s", deviation.describe())
        return
    if deviation.strict:
        raise ExportError(
            f"the ONNX model's probabilities deviate from PyTorch's beyond the tolerance: "
            f"{deviation.describe()}. {what} was not written.\n"
            "  Raise export.max_deviation if this deviation is acceptable for your use, or set "
            "export.strict=false to keep the model with a warning."
        )
    log.warning(
        "export: NUMERICAL CHECK FAILED (kept because export.strict=false): %s",
        deviation.describe(),
    )
