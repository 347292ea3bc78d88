"""A trained run as export and predict find it: its checkpoint and the config it was trained with."""

from __future__ import annotations

from pathlib import Path

from orchard_app.errors import CheckpointError
from orchard_app.rundir import layout


def resolve_target(target: Path) -> tuple[Path, Path]:
    """(checkpoint, run directory): a run dir's checkpoints/best.pt, or the file given."""
    if target.is_dir():
        best = layout.best_checkpoint(target)
        if not best.is_file():
            raise CheckpointError(
                f"{target} has no {best.relative_to(target)}: not a run directory, or its run never "
                f"finished an epoch.\n  Pass a run directory (outputs/<date>/<run>) or a "
                "checkpoint file."
            )
        return best, target
    if target.is_file():
        in_run = target.parent.name == layout.CHECKPOINTS_DIR
        return target, (layout.run_dir_of_checkpoint(target) if in_run else target.parent)
    raise CheckpointError(
        f"{target}: no such run directory or checkpoint file.\n"
        "  Pass a run directory (outputs/<date>/<run>) or a checkpoint file."
    )


def saved_config(checkpoint: Path, run_dir: Path) -> tuple[dict, str, dict | None]:
    """The run's config: .hydra/config.yaml when the run dir has one (no torch needed),
    else the resolved config recorded in the checkpoint (read once, reused for the weights)."""
    hydra_config = layout.saved_config(run_dir)
    if hydra_config.is_file():
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.load(hydra_config)), str(hydra_config), None
    from orchard_app.engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if not ckpt.get("config"):
        raise CheckpointError(
            f"{checkpoint} records no config and {hydra_config} is missing, so the model cannot "
            "be rebuilt; export a checkpoint written by orchard_app training"
        )
    return ckpt["config"], str(checkpoint), ckpt


def trained_config(checkpoint: Path, run_dir: Path, overrides: list[str] | None = None):
    """(the run's config composed as its training command composed it, with `overrides` on
    top; the checkpoint when the config had to be read from it, else None)."""
    from orchard_app.config.saved import compose_saved

    saved, source, ckpt = saved_config(checkpoint, run_dir)
    return compose_saved(saved, overrides or [], source), ckpt
