"""Latency, measured the same way for every model: median wall time of `repeats` timed runs
after `warmup` untimed ones, per batch size, with a stated number of threads. Each model is
timed in a block of its own: onnxruntime's threads spin for a while after a run, which would
slow down a PyTorch run that follows at once."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Predictor = Callable[[np.ndarray], np.ndarray]


def batch_of(images: np.ndarray, size: int) -> np.ndarray:
    """The first `size` images (repeated when there are fewer), contiguous."""
    reps = -(-size // len(images))
    return np.ascontiguousarray(np.concatenate([images] * reps)[:size])


def latency(
    predictors: dict[str, Predictor],
    images: np.ndarray,
    batch_sizes: Sequence[int],
    warmup: int,
    repeats: int,
) -> dict[str, dict[str, float]]:
    """{model: {"batch_<n>_ms": median milliseconds per call}}."""
    out: dict[str, dict[str, float]] = {name: {} for name in predictors}
    for size in batch_sizes:
        batch = batch_of(images, int(size))
        for name, predict in predictors.items():
            for _ in range(warmup):
                predict(batch)
            seconds = []
            for _ in range(repeats):
                started = time.perf_counter()
                predict(batch)
                seconds.append(time.perf_counter() - started)
            out[name][f"batch_{size}_ms"] = round(1000 * statistics.median(seconds), 4)
    return out


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
