"""Metric names as MLflow shows them, mapped here at the MLflow boundary only: metrics.json,
the console and the config (`training.monitor=val_accuracy`) keep their own names.

MLflow's "Model metrics" tab groups charts by the part of a key before its last `/`, and
orders the groups by plain string comparison ("Model metrics", the keys without a `/`, last).
The per-epoch learning curves go under `epoch/` so that the tab opens on them (`epoch` sorts
before `export`, `run`, `test` and `time`); within a group charts are ordered by name, so the
learning rate and timings live in groups of their own:

    epoch/train_loss, epoch/val_loss, epoch/val_accuracy, ...   per epoch (step = epoch)
    optimizer/lr, time/epoch_seconds, ...                       per epoch
    test/accuracy, test/per_class/f1/<class>, ...               once, at the end
    run/best_val_accuracy, run/best_epoch, run/epochs_run, time/train_seconds
    export/<model>/<metric>                                      after an export

Light on purpose (no mlflow import): tests and readers name metrics through it.
"""

from __future__ import annotations

import re

EPOCH = "epoch"
PER_EPOCH = {"lr": "optimizer/lr", "seconds": "time/epoch_seconds",
             "train_seconds": "time/epoch_train_seconds",
             "val_seconds": "time/epoch_val_seconds"}  # fmt: skip


def epoch_metric(key: str) -> str:
    """A per-epoch record's key (`train_loss`, `val_auc`, `lr`) as an MLflow metric name."""
    return PER_EPOCH.get(key) or f"{EPOCH}/{safe(key)}"


def test_metric(key: str, label: str | None = None) -> str:
    """`test/<metric>`, or `test/per_class/<metric>/<class>` for one class (or label)."""
    return f"test/{safe(key)}" if label is None else f"test/per_class/{safe(key)}/{safe(label)}"


def best_metric(monitor: str) -> str:
    """The monitor's best validation value: `run/best_val_accuracy`."""
    return f"run/best_{safe(monitor)}"


def run_metric(key: str) -> str:
    """A run's summary number: `run/best_epoch`, `run/epochs_run`; its training time under time/."""
    return "time/train_seconds" if key == "train_seconds" else f"run/{safe(key)}"


def export_metric(model: str, metric: str) -> str:
    """An export's number for one model (`pytorch`, `onnx_fp32`, `onnx_int8`)."""
    return f"export/{safe(model)}/{safe(metric)}"


def safe(part: str) -> str:
    """One part of a metric name: letters, digits, `_`, `-` and `.` only. MLflow keeps spaces,
    but a space in a key is easy to mistake and hard to type in a search, and other
    characters are refused or changed (`normal, benign` once came out as `normal_ benign`):
    every other run of characters becomes one `_` (`normal, benign` -> `normal_benign`)."""
    return re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(part)).strip("_.") or "_"
