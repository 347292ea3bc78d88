"""Which precision a run trains in: `hardware.amp` true (bf16 on CPU, `amp_dtype` on CUDA),
false (fp32), or null, what `hardware=auto` sets: bf16 autocast only where the device computes
bf16 natively, else fp32, said in one log line at start-up.

A CPU computes bf16 natively when it has the instructions for it: x86 `avx512_bf16` or
`amx_bf16`, Arm `bf16` (the flags Linux lists in /proc/cpuinfo). Elsewhere oneDNN emulates
bf16 with fp32 instructions: often still faster (half the memory traffic), but not a choice to
make silently, so `auto` keeps fp32 there and `hardware.amp=true` opts in
(`bench/amp_speed.py` measures both on the machine at hand).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger("orchard_app")

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")  # x86 AMX, x86 AVX-512, Arm (aarch64)
CPUINFO = Path("/proc/cpuinfo")


def cpu_bf16_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """The native-bf16 flags this CPU reports (empty where none, or where unknown)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return [f for f in CPU_BF16_FLAGS if f in flags]


def auto_amp_dtype(hardware, device: torch.device) -> tuple[torch.dtype | None, str]:
    """(autocast dtype or None for fp32, why) for `hardware.amp=null`."""
    if device.type == "cuda":
        if str(hardware.amp_dtype) == "fp16":
            return torch.float16, "fp16 autocast (hardware.amp_dtype=fp16 on CUDA)"
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16, f"bf16 autocast: {torch.cuda.get_device_name(device)} computes bf16 natively"  # fmt: skip
        return None, (f"fp32: {torch.cuda.get_device_name(device)} has no native bf16 "
                      "(hardware.amp=true hardware.amp_dtype=fp16 for fp16 autocast)")  # fmt: skip
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        if flags:
            return torch.bfloat16, f"bf16 autocast: this CPU computes bf16 natively ({', '.join(flags)})"  # fmt: skip
        return None, ("fp32: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag); "
                      "hardware.amp=true uses bf16 anyway (emulated; bench/amp_speed.py measures it)")  # fmt: skip
    return None, f"fp32 (no automatic mixed precision on {device.type})"


def amp_dtype(hardware, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a run (None: fp32); `hardware.amp=null` decides and logs why."""
    if hardware.amp is None:
        dtype, why = auto_amp_dtype(hardware, device)
        log.info("precision (hardware.amp=null, auto): %s", why)
        return dtype
    if not hardware.amp:
        return None
    if device.type != "cuda" or hardware.amp_dtype == "bf16":
        return torch.bfloat16
    if hardware.amp_dtype == "fp16" or not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16
