"""A run's results: metrics.json and predictions_test.csv (machine-readable), the figures and
report.md; each file written atomically (a reader never sees half a file)."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from orchard_app.atomic import atomic_path, atomic_write
from orchard_app.evaluation.figures import (
    confusion_matrix,
    per_label_auc,
    roc_curves,
    sample_grid,
    training_curves,
)
from orchard_app.evaluation.metrics import confusion, predictions
from orchard_app.evaluation.report import write_report
from orchard_app.evaluation.summary import RunSummary
from orchard_app.rundir.layout import FIGURES_DIR, PREDICTIONS, REPORT


def clean_json(value: Any) -> Any:
    """JSON has no NaN: write null instead (a class absent from a split has no AUC)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value


def write_results(run_dir: Path, summary: RunSummary, config: dict, data, labels: np.ndarray,
                  probs: np.ndarray, evaluation, saliency_model=None) -> None:  # fmt: skip
    """predictions_test.csv, the figures (`evaluation.figures`) and report.md; metrics.json
    comes last, from `train()`, once everything else is written."""
    names = list(data.info.label_names)
    write_predictions(run_dir / PREDICTIONS, data.info.task, labels, probs, names)
    figures = []
    if evaluation.figures:
        figures = run_figures(run_dir, summary, data, labels, probs, evaluation.sample_grid,
                              saliency_model if evaluation.saliency else None)  # fmt: skip
    write_report(run_dir / REPORT, summary, config, figures)


def write_metrics(path: Path, summary: RunSummary) -> None:
    atomic_write(path, json.dumps(clean_json(summary.to_dict()), indent=2) + "\n")


def write_predictions(path: Path, task: str, labels: np.ndarray, probs: np.ndarray, names: list[str]) -> None:  # fmt: skip
    """One row per test sample: index, true label(s), prediction(s), a probability per class."""
    pred = predictions(task, probs)
    cols = [re.sub(r"\W+", "_", n.strip()).strip("_") or f"class_{i}" for i, n in enumerate(names)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        if task == "multi-label":
            w.writerow(["index", *(f"{k}_{c}" for k in ("true", "pred", "prob") for c in cols)])
            for i in range(len(labels)):
                w.writerow([i, *labels[i].astype(int), *pred[i], *(f"{p:.6f}" for p in probs[i])])
        else:
            w.writerow(
                ["index", "true", "true_name", "pred", "pred_name", *(f"prob_{c}" for c in cols)]
            )
            for i in range(len(labels)):
                t, p = int(labels[i]), int(pred[i])
                w.writerow([i, t, names[t], p, names[p], *(f"{q:.6f}" for q in probs[i])])


def run_figures(run_dir: Path, summary, data, labels: np.ndarray, probs: np.ndarray,
                samples: int, saliency_model=None) -> list[str]:  # fmt: skip
    """Draw a run's figures; returns their paths relative to the run dir, for the report.
    `saliency_model` (raw pixels in, logits out) adds the Grad-CAM figure."""
    info, names = data.info, list(data.info.label_names)
    (run_dir / FIGURES_DIR).mkdir(exist_ok=True)
    made: list[str] = []

    def path(name: str) -> Path:
        made.append(f"{FIGURES_DIR}/{name}")
        return run_dir / made[-1]

    training_curves(path("training_curves.png"), summary.history, summary.monitor["name"],
                    summary.best_epoch)  # fmt: skip
    if info.multilabel:
        from sklearn.metrics import roc_auc_score

        aucs = {
            n: float(roc_auc_score(labels[:, i], probs[:, i]))
            for i, n in enumerate(names)
            if 0 < labels[:, i].sum() < len(labels)
        }
        per_label_auc(path("auc_per_label.png"), aucs)
    else:
        confusion_matrix(path("confusion_matrix.png"), confusion(labels, probs, len(names)), names)
    roc_curves(path("roc_curves.png"), info.task, labels, probs, names)
    n = min(int(samples), len(labels))
    if n:
        import torch

        idx = np.random.default_rng(0).choice(len(labels), size=n, replace=False)
        sample = data.test.rows(torch.from_numpy(idx)).cpu().numpy()
        sample_grid(path("test_samples.png"), sample, labels[idx], probs[idx], names, info.task)
    if saliency_model is not None:
        from orchard_app.evaluation.saliency import saliency_figure

        saliency_figure(saliency_model, data.test.rows, labels, probs, names, path("saliency.png"))
    return made
