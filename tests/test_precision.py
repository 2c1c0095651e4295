"""`train.precision = "auto"`: bf16 where the device has bf16 units, fp32 elsewhere, decided in one place."""

from __future__ import annotations

import pytest
import torch

from csm_adapt.config.schema import TrainConfig
from csm_adapt.training import precision
from csm_adapt.training.precision import cpu_bf16_units, resolve_precision

X86 = "processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) bf16 Edition\nflags\t\t: fpu sse2 avx2 {extra}\n\n"


def x86(extra: str, cpus: int = 2) -> str:
    return "".join(X86.format(i=i, extra=extra) for i in range(cpus))


@pytest.mark.parametrize(
    ("cpuinfo", "units"),
    [
        (x86("avx512f avx512_bf16 amx_tile amx_bf16 amx_int8"), "amx_bf16"),  # Sapphire Rapids: AMX first
        (x86("avx512f avx512_bf16"), "avx512_bf16"),  # Cooper Lake, Zen 4
        (x86("avx512f avx512_vnni"), None),  # AVX-512 without BF16; "bf16" in the model name is no flag
        (x86(""), None),
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n", "bf16"),  # Arm Neoverse V1
        ("processor\t: 0\nFeatures\t: fp asimd evtstrm aes\n", None),  # Arm without FEAT_BF16
    ],
)
def test_cpu_bf16_units_reads_the_flags(cpuinfo, units):
    assert cpu_bf16_units(cpuinfo) == units


@pytest.mark.parametrize(
    ("setting", "device", "units", "expected"),
    [
        ("auto", "cuda", None, "bf16"),
        ("auto", "cpu", "avx512_bf16", "fp32"),  # bf16 units, but not reliably faster: benchmarks/RESULTS.md
        ("auto", "cpu", None, "fp32"),
        ("auto", "mps", "amx_bf16", "fp32"),  # the CPU's units are not the device's
        ("fp32", "cpu", "amx_bf16", "fp32"),  # the recipe can force either
        ("bf16", "cpu", None, "bf16"),
        ("fp16", "cuda", None, "fp16"),
    ],
)
def test_resolve_precision(monkeypatch, setting, device, units, expected):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda cpuinfo=None: units)
    assert resolve_precision(setting, torch.device(device)) == expected


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match='"fp8" is not one of: auto, bf16, fp16, fp32'):
        resolve_precision("fp8", torch.device("cpu"))


def test_recipe_default_is_auto_and_validated():
    assert TrainConfig().precision == "auto"
    with pytest.raises(ValueError, match="fp8"):
        TrainConfig(precision="fp8")
