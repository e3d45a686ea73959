"""What the machine can do: the CPU's model and flags, and whether a device computes in bf16.

bf16 autocast pays only where the hardware multiplies bf16 matrices itself. On a CPU without
AVX512-BF16 or AMX (an AVX2-only AMD EPYC, say) torch's bf16 paths are slow fallbacks: a
gemma-3-270m training step took 36-64x as long as in fp32 there (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import os
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


FLUSH_DENORMALS_ENV = "FISHDIP_FLUSH_DENORMALS"


def flush_denormals() -> bool:
    """Make the calling thread's CPU arithmetic treat subnormal floats as zero and flush
    subnormal results to zero (x86 DAZ and FTZ; where torch supports it, ARM's FZ). Returns
    whether the mode is on.

    Arithmetic on a subnormal fp32 value (under 1.2e-38) takes the CPU's slow path: a matrix
    product with a subnormal operand ran 220x slower than one without on a Xeon. Training
    makes them. The output layer's gradient is the softmax over the vocabulary, and a word with
    a log-probability between -87 and -103 gets a subnormal probability: once gemma was
    confident, 4.2% of its 262k words did, and its steps took 2.5x as long (bench/denormals.py,
    docs/BENCHMARKS.md). Flushing changes values under 1.2e-38 only (the benchmark's losses were
    identical at every step); TensorFlow's CPU thread pools flush them too.

    The mode lives in each thread's control register, and a thread inherits its creator's at
    birth: torch's OpenMP threads get it only if it is on before the calling thread's first
    parallel operation. So core calls this at its entry points (``load_base``, ``fit``,
    ``predict``), before they compute. ``FISHDIP_FLUSH_DENORMALS=0`` leaves the mode alone.
    """
    if os.environ.get(FLUSH_DENORMALS_ENV, "1").strip().lower() in {"0", "off", "false", "no"}:
        return False
    return bool(torch.set_flush_denormal(True))
