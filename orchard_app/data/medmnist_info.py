"""MedMNIST metadata (URLs, MD5s, labels, splits, tasks) read from `medmnist.INFO`.

`import medmnist` imports torch (seconds), so the INFO table is loaded from the installed
package's `info.py` alone. Nothing here copies the table: names, checksums and sizes always
come from the medmnist release that is installed.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from typing import Any

# Our task names; MedMNIST's own strings are the keys.
TASK_FROM_INFO = {
    "multi-class": "multi-class",
    "binary-class": "binary",
    "multi-label, binary-class": "multi-label",
    "ordinal-regression": "ordinal",
}


@cache
def medmnist_info() -> dict[str, dict[str, Any]]:
    spec = importlib.util.find_spec("medmnist")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the medmnist package is not installed: pip install medmnist")
    location = list(spec.submodule_search_locations)[0]
    info_spec = importlib.util.spec_from_file_location(
        "_orchard_medmnist_info", f"{location}/info.py"
    )
    module = importlib.util.module_from_spec(info_spec)
    info_spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.INFO


def medmnist_2d_names() -> list[str]:
    return [name for name in medmnist_info() if not name.endswith("3d")]


def file_name(name: str, resolution: int) -> str:
    """Official file name: bloodmnist.npz at 28 px, bloodmnist_64.npz at 64 px, ..."""
    return f"{name}.npz" if resolution == 28 else f"{name}_{resolution}.npz"


def url_and_md5(name: str, resolution: int) -> tuple[str, str]:
    info = medmnist_info()[name]
    suffix = "" if resolution == 28 else f"_{resolution}"
    return info[f"url{suffix}"], info[f"MD5{suffix}"]


def task_of(name: str) -> str:
    return TASK_FROM_INFO[medmnist_info()[name]["task"]]


def label_names(name: str) -> list[str]:
    labels = medmnist_info()[name]["label"]
    return [labels[str(i)] for i in range(len(labels))]
