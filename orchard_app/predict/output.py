"""What predict leaves: predictions.csv (one row per input: its name, the prediction, i.e. the
class name or, for a multi-label model, the labels above 0.5 `;`-joined, and one probability
column per class) and the few lines it prints when it is done."""

from __future__ import annotations

import csv
import io
from collections import Counter
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


def summary(labels: list[str], names: list[str], multilabel: bool, source: str, seconds: float,
            csv_path: Path, saliency: Path | None = None) -> str:  # fmt: skip
    n = len(labels)
    counts = Counter(x for label in labels for x in (label.split(";") if multilabel else [label]))
    per = ", ".join(f"{name} {counts.get(name, 0)}" for name in names)
    lines = [
        f"predicted {n} image(s) with {source} in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f}/s)",
        f"{'labels above 0.5' if multilabel else 'predicted classes'}: {per}",
        f"written: {csv_path}",
    ]
    if multilabel:
        lines.insert(2, f"no label above 0.5: {sum(1 for label in labels if not label)}")
    if saliency is not None:
        lines.append(f"saliency maps: {saliency}/ (one per image) and {saliency}_grid.png")
    return "\n".join(lines)
