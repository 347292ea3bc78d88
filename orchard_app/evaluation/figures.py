"""Figures for the report: training curves, confusion matrix (or per-label AUC), ROC curves,
sample predictions (evaluation/artifacts.py draws a run's set into <run dir>/figures/).

Drawn with matplotlib's Agg backend at a modest dpi (legible, and about a second for all four).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from orchard_app.atomic import atomic_path

DPI = 110


def pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: Path, title: str | None = None) -> None:
    """A figure as a PNG, written atomically, then closed."""
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    pyplot().close(fig)


def _short(name: str, n: int = 22) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def training_curves(
    path: Path, history: list[dict[str, Any]], monitor: str, best_epoch: int | None
) -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="train")
    axes[0].plot(epochs, [h["val_loss"] for h in history], "o-", ms=3, label="validation")
    axes[0].set(title="Loss", xlabel="epoch")
    for key in ("val_accuracy", "val_auc", "val_macro_f1"):
        axes[1].plot(epochs, [h[key] for h in history], "o-", ms=3, label=key.removeprefix("val_"))
    axes[1].set(title="Validation metrics", xlabel="epoch")
    axes[2].plot(epochs, [h["lr"] for h in history], "o-", ms=3, color="tab:gray")
    axes[2].set(title="Learning rate (end of epoch)", xlabel="epoch")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    if best_epoch is not None:
        for ax in axes[:2]:
            ax.axvline(best_epoch, color="tab:green", ls="--", lw=1, label=f"best ({monitor})")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    save(fig, path)


def confusion_matrix(path: Path, cm: np.ndarray, names: list[str]) -> None:
    plt = pyplot()
    n = len(names)
    size = max(4.5, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    row = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(row, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    ticks = [_short(x) for x in names]
    ax.set_xticks(range(n), ticks, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), ticks, fontsize=8)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title="Confusion matrix (test; counts, colour = row share)",
    )
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7 if n > 10 else 8,
                        color="white" if row[i, j] > 0.5 else "black")  # fmt: skip
    save(fig, path)


def roc_curves(
    path: Path, task: str, labels: np.ndarray, probs: np.ndarray, names: list[str]
) -> None:
    from sklearn.metrics import auc, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.2))
    if task == "binary":
        curves = [(names[1], labels == 1, probs[:, 1])]
    elif task == "multi-label":
        curves = [(names[i], labels[:, i] == 1, probs[:, i]) for i in range(len(names))]
    else:
        curves = [(names[i], labels == i, probs[:, i]) for i in range(len(names))]
    cmap = plt.get_cmap("tab20" if len(curves) > 10 else "tab10")
    for k, (name, positive, score) in enumerate(curves):
        if 0 < positive.sum() < len(positive):
            fpr, tpr, _ = roc_curve(positive, score)
            ax.plot(fpr, tpr, lw=1.4, color=cmap(k % cmap.N),
                    label=f"{_short(name)} ({auc(fpr, tpr):.3f})")  # fmt: skip
    ax.plot([0, 1], [0, 1], color="gray", lw=0.8, ls="--")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curves (test, one-vs-rest)",
           xlim=(0, 1), ylim=(0, 1.01))  # fmt: skip
    ax.legend(fontsize=7, loc="lower right", title="class (AUC)", title_fontsize=7)
    ax.grid(alpha=0.3)
    save(fig, path)


def sample_grid(path: Path, images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                names: list[str], task: str) -> None:  # fmt: skip
    """Test images with true and predicted labels (green = right, red = wrong); images N x C x H x W uint8."""
    plt = pyplot()
    n = len(images)
    cols = min(8, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.75 * cols, 2.0 * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= n:
            continue
        img = images[k]
        gray = img.shape[0] == 1
        ax.imshow(img[0] if gray else img.transpose(1, 2, 0), cmap="gray" if gray else None)
        if task == "multi-label":
            true = {names[i] for i in np.flatnonzero(labels[k])}
            pred = {names[i] for i in np.flatnonzero(probs[k] > 0.5)}
            ok = true == pred
            text = f"T: {_short(','.join(sorted(true)) or '-', 16)}\nP: {_short(','.join(sorted(pred)) or '-', 16)}"
        else:
            t, p = int(labels[k]), int(probs[k].argmax())
            ok = t == p
            text = f"T: {_short(names[t], 16)}\nP: {_short(names[p], 16)} {probs[k, p]:.2f}"
        ax.set_title(text, fontsize=7, color="tab:green" if ok else "tab:red", loc="left")
    fig.suptitle("Test samples: T = true, P = predicted (probability)", fontsize=9)
    save(fig, path)


def per_label_auc(path: Path, aucs: dict[str, float]) -> None:
    plt = pyplot()
    names = list(aucs)
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.4))
    ax.barh(range(len(names)), [aucs[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), [_short(n) for n in names], fontsize=8)
    ax.set(xlim=(0.4, 1), xlabel="AUC", title="AUC per label (test)")
    ax.axvline(0.5, color="gray", ls="--", lw=0.8)
    ax.invert_yaxis()
    save(fig, path)
