"""Walk a config along the schema dataclasses, whatever built it: keys the schema lacks (Hydra's
`+key=` and `++key=` add them even to a struct config), values outside a Literal's list (a
config loaded from YAML has no types) and nan/inf in float fields."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from orchard_app.config.choices import options
from orchard_app.config.schema import OrchardConfig

OUTSIDE_SCHEMA = ("hydra",)  # Hydra's own node, beside the job config


@functools.cache
def _fields(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def walk(cfg: DictConfig, cls: type = OrchardConfig, prefix: str = "") -> Iterator[tuple]:
    """(dotted key, declared type or None when the schema lacks it, parent's field names).

    Descends into dataclass-typed nodes; a `dict[...]` field (model.params) is one free leaf."""
    fields = _fields(cls)
    for key in cfg:
        if not prefix and key in OUTSIDE_SCHEMA:
            continue
        path, hint = f"{prefix}{key}", fields.get(str(key))
        base = _strip_optional(hint)[0]
        nested = (
            dataclasses.is_dataclass(base)
            and not OmegaConf.is_missing(cfg, key)
            and not OmegaConf.is_interpolation(cfg, key)
            and isinstance(cfg[key], DictConfig)
        )
        if nested:
            yield from walk(cfg[key], base, path + ".")
        else:
            yield path, hint, tuple(fields)


def unknown_keys(cfg: DictConfig) -> list[str]:
    """'<key>: not a known key; did you mean <nearest>?' for each key the schema lacks."""
    problems = []
    for path, hint, known in walk(cfg):
        if hint is not None:
            continue
        parent, _, key = path.rpartition(".")
        where = f"{parent}." if parent else ""
        near = difflib.get_close_matches(key, known, n=1)
        if near:
            fix = f"did you mean {where}{near[0]}?"
        else:
            fix = f"the keys of {parent or 'the config'} are {', '.join(known)}"
        problems.append(f"{path}: not a known key; {fix}")
    return problems


def literal_mismatches(cfg: DictConfig) -> list[tuple[str, Any, str]]:
    """(key, value, what is allowed) for each value outside its Literal type's list: only
    possible in a config built without the schema's types."""
    problems = []
    for path, hint, _ in walk(cfg):
        base, nullable = _strip_optional(hint)
        if typing.get_origin(base) is not Literal:
            continue
        value, allowed = OmegaConf.select(cfg, path, throw_on_missing=False), options(base)
        if value not in allowed and not (nullable and value is None):
            listed = ", ".join(allowed) + (", or null" if nullable else "")
            problems.append((path, value, f"must be one of {listed}"))
    return problems


def nonfinite_floats(cfg: DictConfig) -> dict[str, Any]:
    """{dotted key: value} for float fields (or lists of floats) holding nan or inf."""
    found = {}
    for path, hint, _ in walk(cfg):
        base = _strip_optional(hint)[0]
        if base is float or (typing.get_origin(base) is list and typing.get_args(base) == (float,)):
            value = OmegaConf.select(cfg, path, throw_on_missing=False)
            items = value if OmegaConf.is_list(value) or isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in items):
                found[path] = value
    return found
