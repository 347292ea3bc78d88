"""Training throughput of `train()` vs a bare loop, on BloodMNIST 28 px, in one process.

For each model, `train()` runs 2 epochs on a capped training split (the first epoch warms up)
and its second epoch's training time (`train_seconds` in metrics.json: no validation) gives
images/s. The bare loop is forward + backward + AdamW step on one in-memory batch with the same
model, batch size and threads, timed before and after train() (their mean), so machine noise
hits both sides. Goal: train() >= 0.9 of the bare loop. Ratios are printed last.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from common import compose, data_root

from orchard_app import train
from orchard_app.engine.optim import build_optimizer
from orchard_app.models import build_model

CASES = [("mini_cnn", 128, 40), ("resnet18_adapted", 64, 3)]  # model, batch, steps per epoch


def bare_loop(cfg, batch: int, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg.model, in_chans=3, num_classes=8)
    opt = build_optimizer(model, cfg.optimizer)
    x, y = torch.randn(batch, 3, 28, 28), torch.randint(0, 8, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    step()  # warm-up
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    root = data_root()
    ratios = {}
    for model, batch, steps in CASES:
        cfg = compose("dataset=bloodmnist", f"dataset.root={root}", f"model={model}", "training.epochs=2",
                      f"training.batch_size={batch}", f"dataset.max_samples={batch * steps}",
                      "evaluation.figures=false", "hardware.num_threads=2")  # fmt: skip
        before = bare_loop(cfg, batch, steps)
        with tempfile.TemporaryDirectory() as out:
            train(cfg, output_dir=out)
            epoch = json.loads((Path(out) / "metrics.json").read_text())["history"][-1]
        after = bare_loop(cfg, batch, steps)
        bare = (before + after) / 2
        ours = steps * batch / epoch["train_seconds"]
        ratios[model] = ours / bare
        print(f"{model:18s} batch {batch:3d}: train() {ours:8.1f} img/s   bare loop {bare:8.1f} img/s "
              f"(before {before:.1f}, after {after:.1f})")  # fmt: skip
    print(f"threads: {torch.get_num_threads()}")
    for model, ratio in ratios.items():
        print(f"train()/bare ratio {model}: {ratio:.2f} (goal >= 0.9)")


if __name__ == "__main__":
    main()
