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
    _hydra_entry()


if __name__ == "__main__":
    main()
