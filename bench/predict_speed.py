"""predict vs onnxruntime's bare session: is our wrapper ever the bottleneck?

On a folder of 10,000 28-px PNGs (synthetic, written once) and a tiny mini_cnn run exported to
ONNX (trained here for one epoch unless a run dir is given: `python bench/predict_speed.py
[run dir]`), with the same threads and the same batches of 256:
  1. bare: `session.run` over the pre-decoded uint8 batches;
  2. predict's prediction part over the same pre-decoded arrays (batching + Predictor);
  3. the whole command, `python -m orchard_app.predict <run> <folder>` in-process: listing,
     decoding and resizing the PNGs (a thread pool, ahead of the model), predicting, the CSV.
Goal: (2) and (3) each at least 0.8 x (1) in images per second; the ratios are printed last.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

N, SIDE, BATCH, CLASSES = 10_000, 28, 256, 4


def tiny_run(base: Path) -> Path:
    from common import compose
    from conftest import make_npz

    from orchard_app import train

    npz = make_npz(base / "d.npz", classes=CLASSES)
    run = base / "run"
    train(compose("dataset=npz", f"dataset.path={npz}", "model=mini_cnn", "training.epochs=1",
                  "evaluation.figures=false", "export.enabled=true", "export.int8=false",
                  "export.latency_repeats=1", "export.latency_batch_sizes=[1]"), output_dir=run)  # fmt: skip
    return run


def best_of(fn, repeats: int = 3) -> float:
    """Images per second of the fastest of `repeats` calls of `fn` (after a warm-up call)."""
    fn()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return N / min(seconds)


def main() -> None:
    from PIL import Image

    from orchard_app.predict.__main__ import main as predict_main
    from orchard_app.predict.inputs import Batches, Inputs
    from orchard_app.predict.predictor import load

    base = Path(tempfile.mkdtemp(prefix="predict_speed_"))
    with contextlib.redirect_stdout(io.StringIO()):
        run = Path(sys.argv[1]) if len(sys.argv) > 1 else tiny_run(base)
    images = np.random.default_rng(0).integers(0, 256, (N, SIDE, SIDE), dtype=np.uint8)
    folder = base / "pngs"
    folder.mkdir()
    start = time.perf_counter()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    print(f"wrote {N} PNGs of {SIDE} px in {time.perf_counter() - start:.1f} s (not timed below)")

    predictor = load(run)
    session_predict = predictor.predict  # the bare session.run over a batch
    batches = [np.ascontiguousarray(images[i : i + BATCH, None]) for i in range(0, N, BATCH)]
    bare = best_of(lambda: [session_predict(b) for b in batches])

    batching = Batches(predictor.channels, predictor.side, predictor.resize, BATCH)
    arrays = Inputs([("bench", images)])
    wrapped = best_of(lambda: [predictor(b) for _, b in batching(arrays)])

    def command() -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            predict_main([str(run), str(folder), "--out", str(base / "out"), "--batch-size",
                          str(BATCH)])  # fmt: skip

    whole = best_of(command)
    print(f"threads: {os.cpu_count()}, batch {BATCH}, {N} images of {SIDE} px, model {run}")
    print(f"  1. onnxruntime bare session.run      {bare:10.0f} images/s")
    print(
        f"  2. predict, pre-decoded arrays       {wrapped:10.0f} images/s  ratio {wrapped / bare:.2f}"
    )
    print(
        f"  3. predict, whole command on PNGs    {whole:10.0f} images/s  ratio {whole / bare:.2f}"
    )
    print(f"goal: ratios >= 0.80: {'met' if min(wrapped, whole) >= 0.8 * bare else 'NOT met'}")


if __name__ == "__main__":
    main()
