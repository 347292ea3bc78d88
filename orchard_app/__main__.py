"""Command line: `python -m orchard_app [group=option] [key=value] [-m for sweeps]`."""

import hydra
from omegaconf import DictConfig

from orchard_app.config import CONF_DIR, register

register()


@hydra.main(config_path=str(CONF_DIR), config_name="config")
def _hydra_entry(cfg: DictConfig) -> float:
    from orchard_app.cli import run_job  # heavy imports start here, after --help/--cfg

    return run_job(cfg)


def main() -> None:
    try:
        _hydra_entry()
    except KeyboardInterrupt:  # Ctrl-C while Hydra composes, before the job started
        import sys

        from orchard_app.config.resolvers import drop_unused_claims

        drop_unused_claims()
        print("\norchard_app: interrupted during start-up; nothing was written.", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
