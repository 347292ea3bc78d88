"""Which flips a dataset's labels allow: a horizontal flip turns a left organ into a right one.

A set is side-sensitive ("lateral") when a class name names a side (`kidney-left`, `L lung`,
`rt femur`): mirroring its images teaches the wrong label and flip TTA averages the two sides
together, so horizontal flips are refused there before any data is read. `dataset.lateral`
overrides the inference either way. A set whose images have a canonical up (`dataset.upright`:
X-ray, CT slice, ultrasound, OCT scan) keeps its labels under a vertical flip, but the flipped
image is one the set never shows. A recipe meant for any dataset sets
`dataset.augment.safe_only=true`: it then leaves out what the set forbids (and vertical flips of
upright sets), saying so at start-up, instead of being refused. No torch: validation uses it.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

SIDE_TOKENS = frozenset({"left", "right", "l", "r", "lt", "rt", "sinister", "dexter"})


def side_classes(names: list[str] | tuple[str, ...]) -> list[str]:
    """The class names that name a side, as whole words (`l`/`r` too, never inside a word)."""
    return [n for n in names if SIDE_TOKENS & set(re.split(r"[^a-z]+", str(n).lower()))]


def class_names(ds: Any) -> list[str]:
    """The class names known before any data is read: MedMNIST's from medmnist.INFO, an image
    folder's from its class folders, an npz's from dataset.label_names (none otherwise)."""
    if ds.source == "medmnist":
        from orchard_app.config.medmnist import label_names

        return label_names(ds.name)
    if ds.source == "folder" and ds.get("path"):  # the class folders' names (a listing only)
        root = Path(os.path.expanduser(str(ds.path)))
        top = root / "train" if (root / "train").is_dir() else root
        with contextlib.suppress(OSError):  # (the loader names a missing or unreadable folder)
            return sorted(e.name for e in os.scandir(top) if e.is_dir() and e.name[0] != ".")
    return list(ds.get("label_names") or [])


def is_lateral(ds: Any, names: list[str] | None = None) -> bool:
    """`dataset.lateral` when given, else whether a class name names a side."""
    if ds.get("lateral") is not None:
        return bool(ds.lateral)
    return bool(side_classes(class_names(ds) if names is None else names))


def plan_flips(cfg: Any) -> tuple[dict[str, bool], list[str], list[str]]:
    """(the flip settings to use, what was left out and why, refusals), for
    `dataset.augment.hflip`, `dataset.augment.vflip` and `evaluation.tta` (which averages the
    test predictions over a horizontal flip, unless the set is lateral, and over a vertical one
    when training uses vertical flips)."""
    ds, aug = cfg.dataset, cfg.dataset.augment
    names = class_names(ds)
    lateral, safe_only = is_lateral(ds, names), bool(aug.get("safe_only", False))
    sides = ", ".join(side_classes(names)) or "(dataset.lateral=true)"
    use = {"dataset.augment.hflip": bool(aug.hflip), "dataset.augment.vflip": bool(aug.vflip),
           "evaluation.tta": bool(cfg.evaluation.tta)}  # fmt: skip
    left_out: list[str] = []
    refused: list[str] = []
    if lateral and use["dataset.augment.hflip"]:
        if safe_only:
            use["dataset.augment.hflip"] = False
            left_out.append(f"horizontal flips (the classes name a side: {sides})")
        else:
            refused.append(
                f"dataset.augment.hflip=true mirrors images of {ds.name}, whose classes name a "
                f"side ({sides}): a mirrored left organ is labelled as the left one but looks "
                "like the right one. Drop dataset.augment.hflip, or set dataset.lateral=false "
                "if the names mislead."
            )
    if safe_only and ds.get("upright") and use["dataset.augment.vflip"]:
        use["dataset.augment.vflip"] = False
        left_out.append(f"vertical flips ({ds.name}'s images have a canonical up)")
    if lateral and use["evaluation.tta"] and not use["dataset.augment.vflip"]:
        if safe_only:  # flip TTA there would average over vertical flips only: none are left
            use["evaluation.tta"] = False
            left_out.append("flip TTA (its horizontal flip would swap the sides)")
        else:
            refused.append(
                f"evaluation.tta=true averages the test predictions of {ds.name} over a "
                f"horizontal flip, and its classes name a side ({sides}). Drop evaluation.tta, "
                "turn on dataset.augment.vflip (TTA then averages over vertical flips only), or set "
                "dataset.lateral=false if the names mislead."
            )
    return use, left_out, refused
