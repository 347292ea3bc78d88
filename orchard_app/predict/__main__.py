"""`python -m orchard_app.predict <run dir | model.onnx> <images, folders, .npz>... [--out DIR]`:
predictions.csv and a short summary; `--explain` adds Grad-CAM overlays (README "Predicting
new images")."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from pathlib import Path

from orchard_app.errors import command

PROG = "python -m orchard_app.predict"
log = logging.getLogger("orchard_app.predict")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with command("orchard_app.predict"):
        print(run(args))


def run(args: argparse.Namespace) -> str:
    import numpy as np

    from orchard_app.predict.inputs import Batches, collect
    from orchard_app.predict.output import FILE, predicted, summary, write_predictions
    from orchard_app.predict.predictor import load

    inputs = collect(args.inputs)
    model = load(Path(args.model).expanduser(), args.device, explain=args.explain)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    saliency = _Saliency(out / "saliency", model, args.explain_grid) if args.explain else None
    started = time.perf_counter()
    names, probs = [], []
    batches = Batches(model.channels, model.side, model.resize, args.batch_size)
    for batch_names, batch in batches(inputs):
        p = model(batch, tta=args.tta)
        if saliency:
            saliency.add(batch_names, batch, p, len(names))
        names += batch_names
        probs.append(p)
    probs = np.concatenate(probs).astype(np.float32)
    seconds = time.perf_counter() - started
    write_predictions(out / FILE, names, probs, model.names, model.multilabel)
    if saliency:
        saliency.grid()
    labels = predicted(probs, model.names, model.multilabel)
    return summary(labels, model.names, model.multilabel, model.source, seconds, out / FILE,
                   saliency.folder if saliency else None)  # fmt: skip


class _Saliency:
    """An overlay PNG per image for the predicted class (multi-label: the most probable label)
    and a grid of the first `grid` images."""

    def __init__(self, folder: Path, model, grid: int):
        import pytorch_grad_cam  # noqa: F401  (a few seconds with cv2: before the clock starts)

        self.folder, self.model, self.grid_size = folder, model, grid
        folder.mkdir(exist_ok=True)
        self.first: list = []

    def add(self, names: list[str], batch, probs, start: int) -> None:
        from orchard_app.evaluation.saliency import grad_cam, overlay, save_png

        classes = probs.argmax(1)
        cams = grad_cam(self.model.explainable, batch, classes)
        for k, (name, image, cam) in enumerate(zip(names, batch, cams, strict=True)):
            slug = re.sub(r"[^\w.-]+", "_", Path(name).name).strip("_")[-80:]
            save_png(self.folder / f"{start + k:06d}_{slug}.png", overlay(image, cam))
            if len(self.first) < self.grid_size:
                title = f"{Path(name).name[:20]}\n{self.model.names[classes[k]][:16]} {probs[k].max():.2f}"
                self.first.append((image, cam, title))

    def grid(self) -> None:
        import numpy as np

        from orchard_app.evaluation.saliency import grid_figure

        if self.first:
            images, cams, titles = zip(*self.first, strict=True)
            grid_figure(self.folder.with_name("saliency_grid.png"), np.stack(images),
                        np.stack(cams), list(titles))  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Predict new images with a trained run: writes <out>/predictions.csv (input, "
        "predicted class, one probability column per class) and prints a summary.",
        epilog="Examples:\n"
        f"  {PROG} outputs/2025-01-01/<run> scans/ --out predictions/\n"
        f"  {PROG} <run dir>/exports/model.onnx a.png b.jpg\n"
        f"  {PROG} <run dir> data.npz:test --tta\n"
        f"  {PROG} <run dir> scans/ --explain --explain-grid 16   # Grad-CAM overlays\n"
        "Uses <run dir>/exports/model.onnx when there is one, else checkpoints/best.pt (always "
        "for --explain and --device cuda). Images are resized as the run's dataset.resize.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", help="a run directory, a checkpoint, or a model.onnx")
    parser.add_argument("inputs", nargs="+",
                        help="image files, folders of them, .npz files (file.npz:test: one array)")  # fmt: skip
    parser.add_argument("--out", default="predictions", help="output folder (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="default: %(default)s")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--tta", action="store_true", help="average over the run's flips")
    parser.add_argument("--explain", action="store_true",
                        help="Grad-CAM overlays into <out>/saliency/ and <out>/saliency_grid.png")  # fmt: skip
    parser.add_argument("--explain-grid", type=int, default=16, metavar="N",
                        help="images in the grid figure (default: %(default)s)")  # fmt: skip
    return parser


if __name__ == "__main__":
    main()
