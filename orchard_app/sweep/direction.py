"""An Optuna sweep optimises the monitor: its direction follows `training.monitor`.

Each job returns the best value of `training.monitor` (an accuracy, an AUC, an F1 or a loss),
but the stock Optuna sweeper minimises unless told otherwise, so a study of accuracies would
quietly hunt for the worst run. Before the sweeper exists (`SweepSummary.on_multirun_start`)
its direction is set from the monitor, or, when the user gave one that contradicts the
monitor, the sweep is refused before any trial runs. Any sweeper whose target names Optuna,
or that has Optuna's `direction` and `n_trials` keys (a subclass of ours too), is treated so.
"""

from __future__ import annotations

from omegaconf import DictConfig, ListConfig, open_dict, read_write

from orchard_app.config.monitor import direction_of
from orchard_app.errors import ConfigError, print_error
from orchard_app.sweep.console import say

KEY = "hydra.sweeper.direction"
PLUGIN_DEFAULT = "minimize"  # OptunaSweeperConf.direction in hydra-optuna-sweeper
WORD = {"max": "maximize", "min": "minimize"}
BETTER = {"max": "higher", "min": "lower"}


def is_optuna(sweeper: DictConfig) -> bool:
    if "optuna" in str(sweeper.get("_target_", "")).lower():
        return True
    return "direction" in sweeper and "n_trials" in sweeper


def follow_monitor(config: DictConfig) -> None:
    """Point an Optuna sweeper at the monitor's direction, or exit 2 naming both."""
    sweeper = config.hydra.sweeper
    if not is_optuna(sweeper):
        return
    monitor = config.training.monitor
    want = direction_of(config)
    given = _given(config)
    current = given if given is not None else _name(sweeper.get("direction"))
    if given is None and current in (None, PLUGIN_DEFAULT):
        _set(config, WORD[want])
        say(f"sweep: {KEY}={WORD[want]}, following training.monitor={monitor} "
             f"({BETTER[want]} is better)")  # fmt: skip
        return
    if current != WORD[want]:
        _refuse(current, monitor, want)


def _given(config: DictConfig) -> str | None:
    """The direction given on the command line, as written there (None when not given)."""
    for override in config.hydra.overrides.hydra:
        key, _, value = str(override).partition("=")
        if key.lstrip("+~") == KEY:
            return value.strip("[] '\"") if "," not in value else value
    return None


def _name(direction) -> str | None:
    """'minimize' for Direction.minimize, 'minimize', or a one-item list of either."""
    if isinstance(direction, ListConfig | list):
        if len(direction) != 1:
            return str(list(direction))
        direction = direction[0]
    if direction is None:
        return None
    return getattr(direction, "name", str(direction))


def _set(config: DictConfig, word: str) -> None:
    """Set it in the sweeper's config and in the Hydra overrides: Hydra recomposes every job's
    config from those overrides and refuses a job whose sweeper config differs from the sweep's."""
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.sweeper.direction = word
        config.hydra.overrides.hydra.append(f"{KEY}={word}")


def _refuse(given: str, monitor: str, want: str) -> None:
    """One message, the wording of orchard_app.hpo's own check, exit 2 (a config error)."""
    error = ConfigError([
        f"{KEY}={given} contradicts training.monitor={monitor}, which is to {WORD[want]} "
        f"(each trial returns its best {monitor}, and {BETTER[want]} is better); drop {KEY} "
        "(it follows the monitor), or monitor another metric. No trial was run."
    ])  # fmt: skip
    print_error(error)
    raise SystemExit(error.exit_code)
