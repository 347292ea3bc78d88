"""What the installed medmnist release offers, from `medmnist.INFO`: its 2D datasets and the
image sides they come in (the config's defaults and checks). data/medmnist_info.py reads the
rest of the table (URLs, MD5s, labels, tasks). `import medmnist` imports torch (seconds), so the
table is read from the package's info.py as a literal, without running that module.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path
from typing import Any

BASE_SIDE = 28  # the files without a size suffix (bloodmnist.npz); others are <name>_<side>.npz


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
