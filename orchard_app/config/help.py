"""`--help`'s list of a config group's options, read from conf/<group>/ when help is asked
(so a new option file shows without editing the help text). Light: no Hydra internals."""

from __future__ import annotations

import textwrap
from pathlib import Path

INDENT = 19  # where conf/config.yaml's help template puts the option lists
WIDTH = 100


def group_options(conf_dir: Path, group: str, default: str | None = None) -> str:
    """`bloodmnist, breastmnist, ..., digits (default), ...`: the group's option files,
    wrapped to the help's width."""
    names = sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))
    text = ", ".join(f"{n} (default)" if n == default else n for n in names)
    pad = " " * INDENT  # (the template indents the first line itself)
    return textwrap.fill(text, WIDTH, initial_indent=pad, subsequent_indent=pad).lstrip()
