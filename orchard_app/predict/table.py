"""predictions.csv: one row per input: its name, the prediction (the class name; for a
multi-label model the labels above 0.5, `;`-joined) and one probability column per class."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from orchard_app.atomic import atomic_write

FILE = "predictions.csv"


def predicted(probs: np.ndarray, names: list[str], multilabel: bool) -> list[str]:
    if multilabel:
        return [";".join(names[j] for j in np.flatnonzero(p > 0.5)) for p in probs]
    return [names[j] for j in probs.argmax(1)]


def write_predictions(path: Path, inputs: list[str], probs: np.ndarray, names: list[str],
                      multilabel: bool) -> None:  # fmt: skip
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", "prediction", *(f"prob_{n}" for n in names)])
    for name, pred, p in zip(inputs, predicted(probs, names, multilabel), probs, strict=True):
        writer.writerow([name, pred, *(f"{v:.6f}" for v in p)])
    atomic_write(path, buffer.getvalue())
