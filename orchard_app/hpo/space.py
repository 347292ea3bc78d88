"""The search space from Hydra's override syntax (hydra-optuna-sweeper's parser), each
distribution checked before a study is created, and a distribution spelled back as the
override that asks for it (for messages)."""

from __future__ import annotations

import math
from typing import Any

import optuna
from hydra_plugins.hydra_optuna_sweeper._impl import (  # pinned: hydra-optuna-sweeper 1.4.0rc3
    create_params_from_overrides,
)

from orchard_app.errors import ConfigError, first_line


def search_space(preset: list[str], given: list[str]):
    """Hydra's parse of the space, each distribution checked first (Optuna's own refusals are
    tracebacks); a fixed value on the command line narrows a preset's search over its key, but
    a fixed value and a search both given there contradict each other."""
    problems = []
    for arg in preset + given:
        try:
            space, _, _ = create_params_from_overrides([arg])
        except ValueError as e:
            problems.append(f"invalid search space: {_spelled(arg)}: {_reason(e)}")
            continue
        for d in space.values():
            if any(isinstance(b, float) and not math.isfinite(b) for b in vars(d).values()):
                problems.append(f"invalid search space: {_spelled(arg)}: a bound is not finite")
    if problems:
        raise ConfigError(problems)
    searched, fixed = {}, {}
    for arg in given:
        space, value, _ = create_params_from_overrides([arg])
        searched.update({k: arg for k in space}), fixed.update({k: arg for k in value})
    if both := sorted(set(searched) & set(fixed)):
        raise ConfigError([f"{fixed[k]} and {searched[k]} both given: keep the fixed value or "
                           "the search, not both" for k in both])  # fmt: skip
    space, fixed, fixed_overrides = create_params_from_overrides(preset + given)
    for name in fixed:
        space.pop(name, None)
    return space, fixed, fixed_overrides


def _spelled(arg: str) -> str:
    """`optimizer.lr=interval(0.1, 0.0001)`, as Hydra reads the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        o = OverridesParser.create().parse_override(arg)
    except Exception:
        return arg
    v = o.value()
    if hasattr(v, "end"):  # IntervalSweep
        text = f"interval({v.start}, {v.end})"
    elif hasattr(v, "stop"):  # RangeSweep
        text = f"range({v.start}, {v.stop}, {v.step})"
    else:
        return arg
    return f"{o.get_key_element()}={f'tag(log, {text})' if 'log' in v.tags else text}"


def _reason(e: ValueError) -> str:
    text = first_line(e)
    if "low <= high" in text:
        return "low > high"
    if "low > 0" in text:
        return "a log scale needs low > 0"
    return "the step is 0" if "nonzero step" in text else text


def spelled_space(d: Any) -> str:
    """A distribution as the override that asks for it: choice(16, 32), interval(0.1, 1.0)."""
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return f"choice({', '.join(map(str, d.choices))})"
    if d.step not in (None, 1) or isinstance(d, optuna.distributions.IntDistribution):
        text = f"range({d.low}, {d.high}, {d.step})"
    else:
        text = f"interval({d.low}, {d.high})"
    return f"tag(log, {text})" if d.log else text
