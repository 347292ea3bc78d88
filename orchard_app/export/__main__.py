"""`python -m orchard_app.export <run dir or checkpoint> [key=value ...]`: export a trained run
without retraining, as `export.enabled=true` does at the end of training.

The config is composed like the training command's: conf/ first, then the run's saved config
(<run dir>/.hydra/config.yaml, else the checkpoint's own), then the overrides given here
(e.g. export.opset=19 export.int8=false). The model is rebuilt without pretrained weights (the
checkpoint has them), so this works offline; writes <run dir>/exports/ and the report section.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from orchard_app.errors import command
from orchard_app.export.trained import resolve_target, trained_config
from orchard_app.rundir import layout

PROG = "python -m orchard_app.export"


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    with command("orchard_app.export"):
        run(args.target, args.overrides, show_cfg=args.cfg)


def run(target: str, overrides: list[str], show_cfg: bool = False) -> dict | None:
    """Export `target` (a run directory or a checkpoint file); returns benchmark.json's content."""
    checkpoint, run_dir = resolve_target(Path(target).expanduser())
    cfg, ckpt = trained_config(checkpoint, run_dir, overrides)
    if show_cfg:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg), end="")
        return None
    from orchard_app.config.validate import validate

    validate(cfg)
    return _export(cfg, checkpoint, run_dir, ckpt)


def _export(cfg, checkpoint: Path, run_dir: Path, ckpt: dict | None) -> dict:
    import contextlib
    import logging

    from orchard_app.rundir.lock import RunLock
    from orchard_app.rundir.logging import setup_console_only

    undo = setup_console_only(logging.INFO)
    try:
        is_run = (run_dir / layout.PROVENANCE).is_file()  # a run dir: one writer at a time
        with RunLock(run_dir) if is_run else contextlib.nullcontext():
            from orchard_app.engine.checkpoint import load_checkpoint
            from orchard_app.export.pipeline import export_run

            ckpt = load_checkpoint(checkpoint) if ckpt is None else ckpt
            if is_run:
                _warn_about_the_run(run_dir, checkpoint, ckpt)

            bench = export_run(cfg, checkpoint, run_dir / layout.EXPORTS_DIR, ckpt=ckpt,
                               report=run_dir / layout.REPORT)  # fmt: skip
            if is_run and cfg.tracking.name == "mlflow":
                _track(run_dir, bench)
        logging.getLogger("orchard_app.export").info("done: %s", run_dir / layout.EXPORTS_DIR)
        return bench
    finally:
        undo()


def _warn_about_the_run(run_dir: Path, checkpoint: Path, ckpt: dict) -> None:
    """One line each when the checkpoint is another run's, or the run did not complete."""
    import logging

    from orchard_app.config.resolvers import hash_container
    from orchard_app.rundir.provenance import BEST_DIGEST, file_digest, read_provenance

    log = logging.getLogger("orchard_app.export")
    prov = read_provenance(run_dir / layout.PROVENANCE) or {}
    ours, theirs = prov.get("config_hash"), ckpt.get("config") and hash_container(ckpt["config"])
    if ours and theirs and ours != theirs:
        log.warning("export: %s belongs to another run (config %s, not this run's %s): the "
                    "exports are of that run's model", checkpoint, theirs[:8], ours[:8])  # fmt: skip
    best = checkpoint.resolve() == layout.best_checkpoint(run_dir).resolve()
    recorded = prov.get(BEST_DIGEST) if best else None
    if prov.get("status") == "completed" and recorded and recorded != file_digest(checkpoint):
        log.warning("export: %s was changed after its run finished (its digest differs from "
                    "provenance.json's): the exports are of the changed weights", checkpoint)  # fmt: skip
    elif prov.get("status") not in (None, "completed"):
        epoch = ckpt.get("epoch", (ckpt.get("state") or {}).get("epoch"))
        log.warning("export: the run did not complete (status %s); %s is from epoch %s",
                    prov.get("status"), checkpoint.name, epoch)  # fmt: skip


def _track(run_dir: Path, bench: dict) -> None:
    """Add the exports to the run's MLflow run, as `train()` logs them with export.enabled."""
    import os

    from orchard_app.rundir.provenance import read_provenance

    tracking = (read_provenance(run_dir / layout.PROVENANCE) or {}).get("tracking") or {}
    if "mlflow_run_id" not in tracking:
        return
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # our handlers route its lines
    from orchard_app.export.pipeline import summary_metrics
    from orchard_app.tracking.mlflow_tracker import EXPORT_ARTIFACTS, add_to_run

    add_to_run(
        tracking,
        run_dir,
        [*EXPORT_ARTIFACTS, layout.REPORT, layout.REPORT_HTML],
        summary_metrics(bench),
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Export a trained run to ONNX (fp32 and INT8, preprocessing inside the "
        "graph), check it against PyTorch and benchmark accuracy and latency side by side.",
        epilog="Examples:\n"
        f"  {PROG} outputs/2025-01-01/bloodmnist_resnet18_adapted_ab12cd_10-00-00\n"
        f"  {PROG} <run dir>/checkpoints/last.pt export.int8=false\n"
        f"  {PROG} <run dir> export.opset=19 export.threads=1 export.latency_repeats=100\n"
        f"  {PROG} <run dir> --cfg      # the composed config, nothing exported\n"
        "Writes <run dir>/exports/model.onnx, model_int8.onnx and benchmark.json; exit code 3 "
        "when the export fails its check (export.max_deviation).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("target", help="a run directory (its checkpoints/best.pt) or a checkpoint")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. export.opset=19")
    parser.add_argument("--cfg", action="store_true", help="print the composed config and exit")
    return parser


if __name__ == "__main__":
    main()
