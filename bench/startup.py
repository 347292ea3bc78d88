"""Start-up cost of the command line: `--help` and `--cfg job` (no torch) vs `import torch`.

Prints seconds per command (median of 5 runs) and the ratio to a bare `import torch`; the goal
is well under 1 s for --help and --cfg job. Run: .venv/bin/python bench/startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = {
    "--help": [sys.executable, "-m", "orchard_app", "--help"],
    "--cfg job": [sys.executable, "-m", "orchard_app", "--cfg", "job"],
    "--cfg job dataset=chestmnist model=resnet18_adapted": [
        sys.executable,
        "-m",
        "orchard_app",
        "--cfg",
        "job",
        "dataset=chestmnist",
        "model=resnet18_adapted",
    ],  # fmt: skip
    "bad value (training.epochs=0)": [sys.executable, "-m", "orchard_app", "training.epochs=0"],
    "python -c 'import torch' (reference)": [sys.executable, "-c", "import torch"],
}


def timed(cmd: list[str], cwd: str) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as cwd:
        results = {
            name: statistics.median(timed(cmd, cwd) for _ in range(5))
            for name, cmd in COMMANDS.items()
        }
    torch_s = results["python -c 'import torch' (reference)"]
    for name, seconds in results.items():
        print(f"{name:55s} {seconds:6.3f} s   ({seconds / torch_s:.2f} x import torch)")
    print(f"--cfg job / import torch: {results['--cfg job'] / torch_s:.2f}")


if __name__ == "__main__":
    main()
