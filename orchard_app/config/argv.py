"""What the command line asks for before Hydra composes anything: a sweep (`-m`), and the
arguments that only a sweep can take. Light: Hydra's override parser only."""

from __future__ import annotations

import shlex

MULTIRUN_FLAGS = ("-m", "--multirun")
# with these Hydra shows something (help, a config) and runs nothing: nothing to refuse
SHOW_FLAGS = ("--help", "-h", "--hydra-help", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")  # fmt: skip


def is_multirun(argv: list[str]) -> bool:
    return any(a in MULTIRUN_FLAGS for a in argv) or "hydra.mode=MULTIRUN" in argv


def sweep_only(argv: list[str]) -> list[str]:
    """Problems with `argv` (the arguments after `python -m orchard_app`) as a single run:
    an HPO preset or sweeper, a search space or a list of values, which a single run would
    ignore or Hydra would refuse with a message of its own. Refused, not switched to `-m`:
    a sweep writes elsewhere (multirun/) and runs many jobs; the fix is one flag, printed."""
    if is_multirun(argv) or any(a.split("=", 1)[0] in SHOW_FLAGS for a in argv):
        return []
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, problems, study = OverridesParser.create(), [], False
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # Hydra reports a malformed override itself
            continue
        key = override.key_or_group
        if key == "hpo" and override.value() not in (None, "null"):
            problems.append(f"{arg} runs an Optuna study of many trials, which needs -m")
        elif key == "hydra/sweeper":
            problems.append(f"{arg} takes effect only in a sweep, which needs -m")
        elif override.is_sweep_override():
            problems.append(f"{arg} asks for a sweep (several values or a search space), which "
                            "needs -m; a single run takes one value")  # fmt: skip
            study = study or "interval(" in arg  # only Optuna searches an interval
    if problems:
        fixed = shlex.join(["python", "-m", "orchard_app", "-m", *argv])
        problems.append(f"add -m for the sweep: {fixed}")
        if study and not any(a.split("=", 1)[0] in ("hpo", "hydra/sweeper") for a in argv):
            problems.append("an interval is searched by an Optuna study: add hpo=quick (a "
                            "preset) or hydra/sweeper=orchard_optuna (your space only) too")  # fmt: skip
    return problems
