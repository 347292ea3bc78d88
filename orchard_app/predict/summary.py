"""The few lines predict prints when it is done: how many images, per class, where the file is."""

from __future__ import annotations

from collections import Counter
from pathlib import Path


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
