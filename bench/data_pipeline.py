"""Input pipeline vs model: is data loading ever the bottleneck?

On BloodMNIST 28 px (real file), measured in one process with the same threads:
  1. orchard_app's pipeline: gather uint8 rows + batched augmentation (flips, rotation/zoom,
     colour jitter) + normalisation, batch 128;
  2. for reference, a per-sample torchvision.transforms.v2 pipeline on PIL images (what the
     peer project does in its training process);
  3. a resnet18_adapted train step (forward + backward + optimiser step), batch 128, a few steps.
Goal: (1) at least 20x faster than (3). The ratio is printed last.
"""

from __future__ import annotations

import tempfile

import torch
from common import compose, data_root, rate

from orchard_app.run.assemble import assemble
from orchard_app.run.context import RunContext

BATCH = 128
AUGMENT = ["dataset.augment.hflip=true", "dataset.augment.vflip=true", "dataset.augment.rotation=15",
           "dataset.augment.scale=0.1", "dataset.augment.color_jitter=0.2"]  # fmt: skip


def main() -> None:
    cfg = compose(
        "dataset=bloodmnist", f"dataset.root={data_root()}", "model=resnet18_adapted", *AUGMENT
    )
    with tempfile.TemporaryDirectory() as run_dir:  # the checkpointer's dir; nothing is written
        parts = assemble(cfg, RunContext.create(cfg, run_dir))
    data, pipe, model, opt = parts.data, parts.pipeline, parts.model, parts.engine.optimizer
    g = torch.Generator().manual_seed(0)
    order = pipe.epoch_order(g)
    position = [0]

    def pipeline_batch() -> int:
        start = position[0] % (len(order) - BATCH)
        x, y = pipe.train_batch(order[start : start + BATCH], g)
        position[0] += BATCH
        return len(x)

    from PIL import Image
    from torchvision.transforms import v2

    per_sample = v2.Compose([
        v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(), v2.RandomAffine(degrees=15, scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2), v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.5] * 3),
    ])  # fmt: skip
    images = data.train.images.permute(0, 2, 3, 1).numpy()

    def pil_batch() -> int:
        start = position[0] % (len(images) - BATCH)
        torch.stack([per_sample(Image.fromarray(images[i])) for i in range(start, start + BATCH)])
        position[0] += BATCH
        return BATCH

    model.train()
    x_fixed, y_fixed = pipe.train_batch(order[:BATCH], g)

    def model_step() -> int:
        loss = torch.nn.functional.cross_entropy(model(x_fixed), y_fixed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return BATCH

    print(
        f"bloodmnist 28 px, batch {BATCH}, {torch.get_num_threads()} threads, augmentation: {' '.join(a.split('=')[0].split('.')[-1] for a in AUGMENT)}"
    )
    pipe_rate = rate(pipeline_batch, min_seconds=3)
    print(f"orchard_app batched pipeline      {pipe_rate:10.0f} images/s")
    pil_rate = rate(pil_batch, min_seconds=3)
    print(
        f"per-sample PIL + transforms.v2    {pil_rate:10.0f} images/s   (batched is {pipe_rate / pil_rate:.1f}x faster)"
    )
    model_rate = rate(model_step, min_seconds=10, max_calls=4)
    print(f"resnet18_adapted train step       {model_rate:10.1f} images/s")
    print(f"pipeline / model step ratio: {pipe_rate / model_rate:.0f}x (goal >= 20x)")


if __name__ == "__main__":
    main()
