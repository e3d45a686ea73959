"""bf16 autocast by default only where the hardware multiplies bf16 itself; subnormals flushed."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import torch

import core
from core import hardware, training

AVX2_EPYC = {"model name": "AMD EPYC", "flags": "fpu sse2 avx avx2 fma f16c vaes"}
BF16_EPYC = {"model name": "AMD EPYC", "flags": "fpu sse2 avx avx2 avx512f avx512_bf16"}
AMX_XEON = {"model name": "Intel(R) Xeon(R) Processor", "flags": "avx2 avx512f amx_tile amx_bf16"}
NEOVERSE = {"CPU part": "0xd40", "Features": "fp asimd evtstrm sve bf16 i8mm"}
OLD_ARM = {"CPU part": "0xd0c", "Features": "fp asimd evtstrm crc32"}


@pytest.mark.parametrize(
    ("info", "native"),
    [
        (AVX2_EPYC, False),
        (BF16_EPYC, True),
        (AMX_XEON, True),
        (NEOVERSE, True),
        (OLD_ARM, False),
        ({}, False),
    ],
)
def test_native_bf16_on_a_cpu_follows_its_flags(
    info: dict[str, str], native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hardware, "cpu_info", lambda: info)
    assert hardware.native_bf16(torch.device("cpu")) is native
    assert hardware.cpu_model()  # a name even where /proc/cpuinfo gives none


def test_this_machines_cpu_info_is_read() -> None:
    flags = hardware.cpu_flags()
    assert hardware.native_bf16(torch.device("cpu")) == bool(flags & hardware.BF16_CPU_FLAGS)
    if hardware.cpu_info():  # Linux
        assert flags and hardware.cpu_model()


@pytest.mark.parametrize(("info", "want"), [(AVX2_EPYC, False), (BF16_EPYC, True)])
def test_auto_bf16_trains_a_real_size_base_in_bf16_only_on_native_hardware(
    info: dict[str, str],
    want: bool,
    tiny_causal: core.LoadedBase,
    ner_spec: core.TaskSpec,
    ner_train: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(hardware, "cpu_info", lambda: info)

    def fit(bf16: bool | None) -> core.FitResult:
        cfg = core.TrainConfig(max_steps=1, batch_size=2, bf16=bf16)
        return core.fit(
            tiny_causal, ner_spec, ner_train[:2], method=core.MethodConfig(type="full"), config=cfg
        )

    assert fit(None).config.bf16 is False  # a tiny base stays in fp32 on any hardware
    monkeypatch.setattr(training, "BF16_AUTO_MIN_PARAMETERS", 0)  # as if tiny_causal were real-size
    assert fit(None).config.bf16 is want
    assert fit(True).config.bf16 is True and fit(False).config.bf16 is False  # explicit settings are kept


# Run in a fresh interpreter with two torch threads: the mode must reach torch's worker threads,
# which only inherit it when it is on before their first parallel operation.
_DENORMAL_PROBE = """
import sys, torch
torch.set_num_threads(2)
import core
import core.hardware
if sys.argv[1]:
    core.load_base(sys.argv[1])
n = 1 << 20  # large enough that torch splits the work between both threads
made = torch.full((n,), 1e-30) * 1e-10  # 1e-40 is subnormal: flushed to zero under FTZ
read = torch.randint(1, 1 << 23, (n,), dtype=torch.int32).view(torch.float32) * 1.0  # read as zero under DAZ
on = core.hardware.flush_denormals()  # after the counts: whether the mode is available and wanted
print(on, int((made.view(torch.int32) != 0).sum()), int((read.view(torch.int32) != 0).sum()), n)
"""


def _probe(base: str, env: dict[str, str] | None = None) -> tuple[bool, int, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", _DENORMAL_PROBE, base],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **(env or {})},
    )
    on, made, read, n = done.stdout.split()
    return on == "True", int(made), int(read), int(n)


def test_core_flushes_subnormals_on_every_torch_thread_from_its_first_entry_point() -> None:
    on, made, read, n = _probe("tiny-causal")  # load_base is the first thing core is asked to do
    if not on:
        pytest.skip("this CPU has no flush-to-zero mode that torch can set")
    assert made == 0 and read == 0  # none left on either thread
    _, made, read, n = _probe("")  # without core, the CPU keeps subnormals: the probe can fail
    assert made == n and read == n


def test_flushing_subnormals_can_be_turned_off() -> None:
    on, made, read, n = _probe("tiny-causal", {hardware.FLUSH_DENORMALS_ENV: "0"})
    assert not on and made == n and read == n
