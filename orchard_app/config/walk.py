"""Walk a config along the schema dataclasses, whatever built it, and report what is wrong with
each field on its own: keys the schema lacks (Hydra's `+key=` and `++key=` add them even to a
struct config), values outside a Literal's list (a config loaded from YAML has no types), nan/inf
in float fields, and values outside the field's range rule (`schema.rule`)."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import operator
import types
import typing
from collections.abc import Iterator
from typing import Any, Literal

from omegaconf import DictConfig, OmegaConf

from orchard_app.config.choices import options
from orchard_app.config.schema import OrchardConfig

OUTSIDE_SCHEMA = ("hydra",)  # Hydra's own node, beside the job config
_COMPARE = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


@functools.cache
def _fields(cls: type) -> dict[str, tuple[Any, Any]]:
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.metadata) for f in dataclasses.fields(cls)}


def _strip_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def walk(cfg: DictConfig, cls: type = OrchardConfig, prefix: str = "") -> Iterator[tuple]:
    """(dotted key, declared type or None when the schema lacks it, the field's metadata,
    parent's field names).

    Descends into dataclass-typed nodes; a `dict[...]` field (model.params) is one free leaf."""
    fields = _fields(cls)
    for key in cfg:
        if not prefix and key in OUTSIDE_SCHEMA:
            continue
        path, (hint, meta) = f"{prefix}{key}", fields.get(str(key), (None, {}))
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
            yield path, hint, meta, tuple(fields)


def field_problems(cfg: DictConfig) -> list[str]:
    """'<key>=<value>: <what is allowed>' (or '<key>: not a known key; ...') for each field that
    is wrong on its own, in the config's order."""
    problems = []
    for path, hint, meta, known in walk(cfg):
        if hint is None:
            problems.append(_unknown(path, known))
            continue
        base, nullable = _strip_optional(hint)
        value = OmegaConf.select(cfg, path, throw_on_missing=False)
        if value is None and nullable:
            continue
        many = OmegaConf.is_list(value) or isinstance(value, list)
        items = list(value) if many else [value]
        shown = f"{path}={'null' if value is None else value}: must be"
        if typing.get_origin(base) is Literal:
            if value not in options(base):
                listed = ", ".join(options(base)) + (", or null" if nullable else "")
                problems.append(f"{shown} one of {listed}")
        elif base in (float, list[float]) and any(_nonfinite(v) for v in items):
            finite = "finite numbers:" if many else "a finite number"
            problems.append(f"{shown} {finite}{' ' + meta['says'] if meta else ''}")
        elif meta and not _obeys(value, items, meta):
            problems.append(f"{shown} {meta['says']}")
    return problems


def _unknown(path: str, known: tuple[str, ...]) -> str:
    parent, _, key = path.rpartition(".")
    near = difflib.get_close_matches(key, known, n=1)
    if near:
        return f"{path}: not a known key; did you mean {parent + '.' if parent else ''}{near[0]}?"
    return f"{path}: not a known key; the keys of {parent or 'the config'} are {', '.join(known)}"


def _nonfinite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def _obeys(value: Any, items: list, meta: Any) -> bool:
    try:
        inside = all(_COMPARE[k](v, bound) for v in items for k, bound in meta["bounds"].items())
        return inside and (meta["ok"] is None or meta["ok"](value))
    except (TypeError, ValueError):
        return False
