"""What the machine can do: the CPU's model and flags, and whether a device computes in bf16.

bf16 autocast pays only where the hardware multiplies bf16 matrices itself. On a CPU without
AVX512-BF16 or AMX (an AVX2-only AMD EPYC, say) torch's bf16 paths are slow fallbacks: a
gemma-3-270m training step took 36-64x as long as in fp32 there (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import torch

# x86: AVX512-BF16 or AMX; aarch64 (its "Features" line): the BF16 extension.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_info() -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (empty where there is none); read once."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def cpu_model() -> str:
    info = cpu_info()
    return info.get("model name") or info.get("CPU part") or platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    info = cpu_info()
    return frozenset((info.get("flags") or info.get("Features") or "").split())


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bf16 matrices in hardware, so that bf16 autocast is faster
    than fp32 there rather than an emulation slower than it."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    if device.type == "cpu":
        return bool(cpu_flags() & BF16_CPU_FLAGS)
    return False  # other backends: fp32 unless asked
