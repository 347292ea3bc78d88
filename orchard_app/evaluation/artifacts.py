"""metrics.json and predictions_test.csv: the machine-readable results of a run."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from orchard_app.evaluation.metrics import predictions


def clean_json(value: Any) -> Any:
    """JSON has no NaN: write null instead (a class absent from a split has no AUC)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def write_metrics(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(clean_json(summary), indent=2) + "\n")


def write_predictions(
    path: Path, task: str, labels: np.ndarray, probs: np.ndarray, names: list[str]
) -> None:
    """One row per test sample: index, true label(s), prediction(s), a probability per class."""
    pred = predictions(task, probs)
    cols = [re.sub(r"\W+", "_", n.strip()).strip("_") or f"class_{i}" for i, n in enumerate(names)]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if task == "multi-label":
            w.writerow(
                ["index"]
                + [f"true_{c}" for c in cols]
                + [f"pred_{c}" for c in cols]
                + [f"prob_{c}" for c in cols]
            )
            for i in range(len(labels)):
                w.writerow([i, *labels[i].astype(int), *pred[i], *(f"{p:.6f}" for p in probs[i])])
        else:
            w.writerow(
                ["index", "true", "true_name", "pred", "pred_name"] + [f"prob_{c}" for c in cols]
            )
            for i in range(len(labels)):
                t, p = int(labels[i]), int(pred[i])
                w.writerow([i, t, names[t], p, names[p], *(f"{q:.6f}" for q in probs[i])])
