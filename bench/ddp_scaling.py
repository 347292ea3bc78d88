"""DDP scaling: training images/s of several processes against one (prints figures).

    python bench/ddp_scaling.py [overrides]
        On this CPU: 1 process x 2 threads against 2 processes x 1 thread (torchrun, gloo) at
        the same global batch, i.e. the same cores used as threads or as processes (and 1 x 1
        thread for reference).
    torchrun --nproc_per_node=8 bench/ddp_scaling.py [overrides]
        On a multi-GPU machine: rank 0 first trains alone on its GPU at the per-GPU batch, then
        all ranks train with DDP (global batch = ranks x per-GPU batch); the scaling efficiency is
        DDP images/s / (ranks x one GPU's images/s).

Timed: the second of two training epochs of the engine (batches, augmentation, forward,
backward, gradient all-reduce, optimiser, the per-step stop agreement), no validation.
BloodMNIST 28 px from ../shared/data/medmnist or $ORCHARD_DATA_DIR, else the embedded digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import SHARED, compose

HERE = Path(__file__).resolve()
STEPS = 30  # timed steps per measurement


def dataset_overrides() -> list[str]:
    for root in (SHARED, Path(os.environ.get("ORCHARD_DATA_DIR", "~/.medmnist")).expanduser()):
        if (root / "bloodmnist.npz").is_file():
            return ["dataset=bloodmnist", f"dataset.root={root}", "dataset.download=false"]
    return ["dataset=digits"]


def measure(overrides: list[str], batch: int) -> float:
    """Training images/s of this launch (all its processes) at global batch `batch`."""

    from orchard_app.run.assemble import assemble
    from orchard_app.run.context import RunContext

    cfg = compose(*dataset_overrides(), "training.epochs=2", f"training.batch_size={batch}",
                  f"dataset.max_samples={batch * STEPS}", "evaluation.figures=false",
                  *overrides)  # fmt: skip
    with tempfile.TemporaryDirectory() as out, RunContext.create(cfg, out) as ctx:
        engine = assemble(cfg, ctx).engine
        engine._train_epoch()  # warm-up: allocator, cuDNN autotuning, DDP's bucket order
        engine.state.step, engine.state.order = 0, None
        ctx.group.any(False)  # all processes start the clock together
        started = time.perf_counter()
        engine._train_epoch()  # ends with a loss .item(): the device is done
        ctx.group.any(False)
        seconds = time.perf_counter() - started
    return batch * STEPS / seconds


def cpu_comparison(extra: list[str]) -> None:
    """Launches of this script on this machine: 1 x 2 threads, 2 x 1 thread, and 1 x 1 thread
    for reference (on a machine busy with other work, 2 threads can run slower than 1)."""
    batch = 128
    base = ["--measure", str(batch), "model=mini_cnn", "hardware.device=cpu", *extra]
    one = _run([sys.executable, str(HERE), *base, "hardware.num_threads=2"])
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", str(HERE), *base, "hardware=ddp", "hardware.device=cpu",
                "hardware.num_threads=1"])  # fmt: skip
    single = _run([sys.executable, str(HERE), *base, "hardware.num_threads=1"])
    print(f"dataset: {dataset_overrides()[0]}, model mini_cnn, global batch {batch}, {STEPS} steps")
    print(f"1 process  x 2 threads:          {one:8.1f} img/s")
    print(f"2 processes x 1 thread (gloo):   {two:8.1f} img/s")
    print(f"1 process  x 1 thread:           {single:8.1f} img/s (reference)")
    print(f"2 processes / 1 process: {two / one:.2f} (the same 2 cores as processes or threads); "
          f"2 processes / 1 thread: {two / single:.2f}")  # fmt: skip


def gpu_scaling(extra: list[str]) -> None:
    """Under torchrun: rank 0 alone first (the others wait to join the group), then all."""
    world = int(os.environ["WORLD_SIZE"])
    per_gpu = 256
    base = ["model=resnet18_adapted", "hardware=ddp", "hardware.amp=true",
            "hardware.channels_last=true", *extra]  # fmt: skip
    alone = None
    if os.environ.get("RANK") == "0":
        alone = measure([*base, "hardware.distributed=false"], per_gpu)
    together = measure(base, per_gpu * world)
    if alone is not None:
        print(f"dataset: {dataset_overrides()[0]}, {STEPS} steps, {' '.join(base)}")
        print(f"1 process:        {alone:10.1f} img/s (batch {per_gpu})")
        print(f"{world} processes: {together:10.1f} img/s (global batch {per_gpu * world})")
        print(f"scaling efficiency: {together / (world * alone):.2f}")


def _run(cmd: list[str]) -> float:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parents[1])
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return float(json.loads(line[7:])["images_per_second"])
    sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--measure"]:  # one launch, started by cpu_comparison
        rate = measure(args[2:], int(args[1]))
        if os.environ.get("RANK", "0") == "0":
            print("RESULT " + json.dumps({"images_per_second": rate}), flush=True)
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        gpu_scaling(args)
    else:
        cpu_comparison(args)


if __name__ == "__main__":
    main()
