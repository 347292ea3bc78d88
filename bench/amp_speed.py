"""Training speed of fp32 vs bf16 autocast vs channels_last, side by side, in one process.

A bare loop (forward + backward + Adam step on one in-memory batch of 28-px RGB images, 8
classes) per model and setting. The settings are timed in interleaved rounds (fp32, bf16,
channels_last, both; again; ...) and each reports its median over the rounds, so a neighbour
process slowing the machine hits every setting alike. Ratios against fp32 are printed last,
with what `hardware=auto` picks on this CPU (bf16 only where it is native).

    python bench/amp_speed.py                      # resnet18_adapted, batch 64, torch's threads
    python bench/amp_speed.py --threads 2 --models resnet18_adapted mini_cnn --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch
from common import compose, rate

from orchard_app.engine.precision import cpu_bf16_flags
from orchard_app.models import build_model

SETTINGS = {  # name: (autocast dtype, channels_last)
    "fp32": (None, False),
    "bf16": (torch.bfloat16, False),
    "channels_last": (None, True),
    "bf16+channels_last": (torch.bfloat16, True),
}


def stepper(model_name: str, batch: int, dtype: torch.dtype | None, channels_last: bool):
    cfg = compose(f"model={model_name}")
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = build_model(cfg.model, in_chans=3, num_classes=8).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 3, 28, 28).contiguous(memory_format=fmt)
    y = torch.randint(0, 8, (batch,))

    def step() -> int:
        cast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with cast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return batch

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18_adapted"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per setting and round")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    flags = cpu_bf16_flags()
    print(f"threads {torch.get_num_threads()}, batch {args.batch}, {args.rounds} rounds of "
          f"{args.seconds:.0f} s; CPU capability {torch.backends.cpu.get_cpu_capability()}; "
          f"native bf16 flags: {', '.join(flags) or 'none'}")  # fmt: skip
    for model_name in args.models:
        steps = {name: stepper(model_name, args.batch, *s) for name, s in SETTINGS.items()}
        seen: dict[str, list[float]] = {name: [] for name in SETTINGS}
        for _ in range(args.rounds):
            for name, step in steps.items():
                seen[name].append(rate(step, min_seconds=args.seconds))
        fp32 = statistics.median(seen["fp32"])
        cells = []
        for name, values in seen.items():
            median = statistics.median(values)
            cells.append(f"{name} {median:7.1f} img/s ({median / fp32:.2f}x)")
        print(f"{model_name:17s} " + "   ".join(cells))
    auto = "bf16 autocast" if flags else "fp32 (no native bf16: hardware.amp=true opts in)"
    print(f"hardware=auto on this CPU: {auto}")


if __name__ == "__main__":
    main()
