"""onnxruntime sessions on the CPU with a stated number of threads, used as predictors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from orchard_app.errors import ExportError, first_line


def open_session(path: Path, threads: int):
    """A CPU session with `threads` intra-op threads (one inter-op thread: sequential graph)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: no per-node placement chatter
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # a model this onnxruntime cannot run (opset, operator)
        first = first_line(e, most=300)
        raise ExportError(
            f"onnxruntime {ort.__version__} cannot load the exported model ({first}).\n"
            "  Try another export.opset (18 is the most widely supported), or update onnxruntime."
        ) from e


def onnx_predictor(session) -> Callable[[np.ndarray], np.ndarray]:
    name = session.get_inputs()[0].name

    def predict(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {name: np.ascontiguousarray(batch)})[0]

    return predict
