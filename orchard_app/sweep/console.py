"""The sweep's console lines, in the launcher's `[HH:MM:SS] text` style."""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any


def say(text: str) -> None:
    """One console line in the launcher's `[HH:MM:SS] text` style. Printed, not logged: while
    an in-process job runs, the root logger writes that job's own log files."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def launched(number: int, values: Mapping[str, Any], noun: str = "trial") -> None:
    """The one line of a trial (or job) as it is launched: its number, the job's and the trial's
    number alike (its run dir starts with it), and its sampled or swept values, e.g.
    `trial #3 launched: lr=0.000847 weight_decay=1.2e-05 batch_size=32 dropout=0.183`."""
    say(f"{noun} #{number} launched" + (f": {spelled(values)}" if values else ""))


def spelled(values: Mapping[str, Any]) -> str:
    """`lr=0.000847 batch_size=32`: each key by its last part where that is unambiguous, floats
    to 3 significant digits (the exact values are in the job's .hydra/ and the study)."""
    lasts = [key.rsplit(".", 1)[-1] for key in values]
    return " ".join(
        f"{last if lasts.count(last) == 1 else key}={compact(value)}"
        for key, last, value in zip(values, lasts, values.values(), strict=True)
    )


def compact(value: Any) -> str:
    """0.0008468008575248334 -> 0.000847, 7.06e-06 stays short, 32 and 'cosine' unchanged."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        if not any(c in value for c in ".eE") or value.strip().lower() in ("nan", "inf", "-inf"):
            return value  # an int, or a word float() happens to read
        value = number
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
