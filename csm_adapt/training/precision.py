"""Which numeric precision a run trains in: `train.precision = "auto"` resolved for the device.

`auto` picks bf16 autocast on CUDA (every device this framework targets has bf16 matrix units) and
fp32 on a CPU. Even on CPUs with bf16 units (AMX, AVX-512 BF16), bf16 autocast did not train
reliably faster than fp32 here (benchmarks/RESULTS.md: from 24 % slower to 10 % faster depending on
the step size and the run), so the CPU keeps the exact fp32 arithmetic; a recipe can still force
`bf16`. `cpu_bf16_units` tells the throughput benchmark where measuring bf16 on a CPU is worth it.
The choice is made here only, once per run, and the training loop records the resolved value in the
recipe it hands to the loggers.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

PRECISIONS = ("auto", "bf16", "fp16", "fp32")

# /proc/cpuinfo flags of bf16 units, best first: x86 AMX tiles, x86 AVX-512 BF16, Arm BF16 (FEAT_BF16).
_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def cpu_bf16_units(cpuinfo: str | None = None) -> str | None:
    """The CPU's bf16 unit as its /proc/cpuinfo flag name ("amx_bf16", "avx512_bf16", "bf16"), or None.

    `cpuinfo` is the text of /proc/cpuinfo (read when None). Without it (not Linux), torch's own
    CPU feature probes answer for x86.
    """
    if cpuinfo is None:
        with contextlib.suppress(OSError):
            cpuinfo = Path("/proc/cpuinfo").read_text()
    if cpuinfo is not None:
        flags: set[str] = set()
        for line in cpuinfo.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("flags", "Features"):  # x86, Arm
                flags.update(value.split())
        return next((flag for flag in _BF16_FLAGS if flag in flags), None)
    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    return next((flag for flag, probe in probes if getattr(torch.cpu, probe, lambda: False)()), None)


def resolve_precision(setting: str, device: torch.device) -> str:
    """`setting` ("auto", "bf16", "fp16", "fp32") as the precision this device trains in."""
    if setting not in PRECISIONS:
        raise ValueError(f'precision "{setting}" is not one of: {", ".join(PRECISIONS)}')
    if setting != "auto":
        return setting
    return "bf16" if device.type == "cuda" else "fp32"
