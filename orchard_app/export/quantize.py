"""Static INT8 with onnxruntime: QDQ format, per-channel int8 weights, uint8 activations whose
ranges are calibrated (min/max) on training images.

Static QDQ per-channel is the default on purpose: measured here on a small conv net it was 1.3x
faster than fp32 at batch 1, while dynamic quantization was up to 3x slower than fp32.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from orchard_app.errors import ExportError, cause

log = logging.getLogger("orchard_app.export")

SETTINGS = {"format": "QDQ", "weights": "int8, per channel", "activations": "uint8, per tensor",
            "calibration": "min/max"}  # fmt: skip


def quantize_int8(
    fp32: Path, out: Path, calibration: Sequence[np.ndarray], input_name: str
) -> None:
    """Write the static INT8 version of `fp32` to `out`, calibrated on the uint8 batches given."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch)}

    with tempfile.TemporaryDirectory(prefix="orchard-int8-") as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"  # shapes inferred, graph optimised (BN folded)
        try:
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(
                str(prepared), str(out), Batches(), quant_format=QuantFormat.QDQ,
                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
            )  # fmt: skip
        except Exception as e:
            raise ExportError(
                f"INT8 quantization failed ({cause(e, most=300)}); model.onnx is fine.\n"
                "  Skip INT8 with export.int8=false."
            ) from e


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs every tensor it leaves in float at INFO/WARNING."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)
