"""MedMNIST metadata (URLs, MD5s, labels, splits, tasks) read from `medmnist.INFO`
(config/medmnist.py loads it without importing torch). Nothing here copies the table: names,
checksums and sizes always come from the medmnist release that is installed.
"""

from __future__ import annotations

from orchard_app.config.medmnist import BASE_SIDE, medmnist_2d_names, medmnist_info  # noqa: F401

# Our task names; MedMNIST's own strings are the keys.
TASK_FROM_INFO = {
    "multi-class": "multi-class",
    "binary-class": "binary",
    "multi-label, binary-class": "multi-label",
    "ordinal-regression": "ordinal",
}


def file_name(name: str, resolution: int) -> str:
    """Official file name: bloodmnist.npz at 28 px, bloodmnist_64.npz at 64 px, ..."""
    return f"{name}.npz" if resolution == BASE_SIDE else f"{name}_{resolution}.npz"


def url_and_md5(name: str, resolution: int) -> tuple[str, str]:
    info = medmnist_info()[name]
    suffix = "" if resolution == BASE_SIDE else f"_{resolution}"
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def task_of(name: str) -> str:
    return TASK_FROM_INFO[medmnist_info()[name]["task"]]


def label_names(name: str) -> list[str]:
    labels = medmnist_info()[name]["label"]
    return [labels[str(i)] for i in range(len(labels))]
