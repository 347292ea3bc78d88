"""Classification metrics, computed the way `medmnist.Evaluator` does where it defines them.

- multi-class / ordinal: accuracy of the argmax; AUC = mean one-vs-rest AUC over classes.
- binary: accuracy of the argmax; AUC of the positive-class probability.
- multi-label: accuracy = share of (sample, label) pairs right at threshold 0.5; AUC = mean AUC
  over labels.
Classes (or labels) absent from y_true have no AUC and are left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np


def predictions(task: str, probs: np.ndarray) -> np.ndarray:
    return (probs > 0.5).astype(np.int64) if task == "multi-label" else probs.argmax(1)


def compute_metrics(task: str, y_true: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    pred, y = predictions(task, probs), y_true.astype(np.int64)
    if task == "multi-label":
        columns = [(y[:, i], probs[:, i]) for i in range(y.shape[1])]
        balanced = np.mean(
            [balanced_accuracy_score(y[:, i], pred[:, i]) for i in range(y.shape[1])]
        )
    else:
        classes = [1] if task == "binary" else range(probs.shape[1])
        columns = [(y == i, probs[:, i]) for i in classes]
        balanced = balanced_accuracy_score(y, pred)
    aucs = [roc_auc_score(t, p) for t, p in columns if 0 < t.sum() < len(t)]  # defined per class
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced),
        "auc": float(np.mean(aucs)) if aucs else math.nan,
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
    }


def evaluate_predictor(predict: Callable[[np.ndarray], np.ndarray], batches: Iterable[np.ndarray],
                       labels: np.ndarray, task: str) -> tuple[dict[str, float], np.ndarray]:  # fmt: skip
    """Metrics and probabilities of any predictor (raw image batch -> probabilities): a PyTorch
    module and an onnxruntime session are compared by this one function, on the same batches."""
    probs = np.concatenate([np.asarray(predict(b), dtype=np.float32) for b in batches])
    return compute_metrics(task, labels, probs), probs


def per_class_report(
    task: str, y_true: np.ndarray, probs: np.ndarray, names: list[str]
) -> dict[str, dict[str, float]]:
    """Precision, recall, F1 and support for each class (or label)."""
    from sklearn.metrics import precision_recall_fscore_support

    pred = predictions(task, probs)
    labels = None if task == "multi-label" else list(range(len(names)))
    p, r, f, s = precision_recall_fscore_support(
        y_true.astype(np.int64), pred, labels=labels, zero_division=0
    )
    return {name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                   "support": int(s[i])} for i, name in enumerate(names)}  # fmt: skip


def confusion(y_true: np.ndarray, probs: np.ndarray, n: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(y_true.astype(np.int64), probs.argmax(1), labels=list(range(n)))
