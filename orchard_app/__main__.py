"""Command line: `python -m orchard_app [group=option] [key=value] [-m for sweeps]`."""

import warnings

import hydra
from omegaconf import DictConfig

from orchard_app.config import CONF_DIR, null_group_choices, register
from orchard_app.config.argv import is_multirun, sweep_only
from orchard_app.rundir.claim import claim_once, drop_unused_claims

register(claim=claim_once)
# Hydra 1.4 warns when it instantiates a config `_target_` without an execution whitelist
# from code; ours (the sweep-summary callback) are the app's own classes, named in conf/.
warnings.filterwarnings(
    "ignore",
    message=r"hydra\.utils\.instantiate\(\) resolved _target_='orchard_app\.",
    category=UserWarning,
)


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def _hydra_entry(cfg: DictConfig) -> float:
    from orchard_app.run.job import run_job  # heavy imports start here, after --help/--cfg

    return run_job(cfg, study_trial=_study_trial)


def _study_trial():
    """The Optuna trial this job runs for `hydra/sweeper=orchard_optuna`, else None (optuna is
    imported only then)."""
    import os

    from orchard_app.hpo.contract import ENV_TRIAL

    if ENV_TRIAL not in os.environ:
        return None
    from orchard_app.hpo.trial import JobTrial

    return JobTrial.from_env()


def main() -> None:
    import sys

    args = sys.argv[1:]
    if is_multirun(args):
        problems = [f"{a}: null is not an option a sweep can take; for no preset, sweep "
                    "experiment=none (e.g. experiment=mini_cnn_flips,none)"
                    for a in null_group_choices(args)]  # fmt: skip
    else:  # (Hydra ends a group=null in a traceback)
        problems = sweep_only(args) + [
            f"{a}: null is not an option; leave {a.split('=')[0]} out for its default"
            + (", or use none" if (CONF_DIR / a.split("=")[0] / "none.yaml").is_file() else "")
            for a in null_group_choices(args)
        ]
    if problems:
        from orchard_app.errors import ConfigError, print_error

        error = ConfigError(problems)
        print_error(error)
        raise SystemExit(error.exit_code)
    try:
        _hydra_entry()
    except KeyboardInterrupt:  # Ctrl-C while Hydra composes, before the job started
        drop_unused_claims()
        print("\norchard_app: interrupted during start-up; nothing was written.", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
