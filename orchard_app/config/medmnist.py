"""What the installed medmnist release offers, from `medmnist.INFO`: its 2D datasets, the image
sides they come in (the config's defaults and checks), file names, URLs, MD5s, labels and tasks.
Nothing here copies the table. `import medmnist` imports torch (seconds), so the table is read
from the package's info.py as a literal, without running that module.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

BASE_SIDE = 28  # the files without a size suffix (bloodmnist.npz); others are <name>_<side>.npz
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
    source = Path(list(spec.submodule_search_locations)[0], "info.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            getattr(t, "id", "") == "INFO" for t in node.targets
        ):
            return ast.literal_eval(node.value)
    raise ImportError(f"no INFO table in medmnist's info.py ({spec.origin})")


def medmnist_2d_names() -> list[str]:
    return [name for name in medmnist_info() if not name.endswith("3d")]


def medmnist_sides() -> list[int]:
    """The image sides every MedMNIST 2D set comes in: BASE_SIDE and each `url_<side>`."""
    infos = [medmnist_info()[name] for name in medmnist_2d_names()]
    sides = set.intersection(
        *({int(k[4:]) for k in info if k.startswith("url_")} for info in infos)
    )
    return [BASE_SIDE, *sorted(sides)]


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
    """The class names of a MedMNIST set, in label order (none for an unknown name)."""
    labels = medmnist_info().get(name, {}).get("label", {})
    return [labels[str(i)] for i in range(len(labels))]
