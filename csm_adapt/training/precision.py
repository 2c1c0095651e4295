"""Which numeric precision a run trains in: `train.precision = "auto"` resolved for the device.

`auto` picks bf16 autocast where the hardware has bf16 matrix units (every CUDA device this
framework targets; CPUs with AMX or AVX-512 BF16, or Arm's BF16 extension) and fp32 elsewhere,
where bf16 would be emulated and slower. The choice is made here only, once per run, and the
training loop records the resolved value in the recipe it hands to the loggers.
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
    if device.type == "cuda" or (device.type == "cpu" and cpu_bf16_units() is not None):
        return "bf16"
    return "fp32"
