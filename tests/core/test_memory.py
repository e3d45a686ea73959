"""release_free_memory: returns freed heap to the OS on glibc and under a preloaded jemalloc,
and is harmless elsewhere."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.memory import jemalloc_path, release_free_memory


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def freed_heap_goes_back() -> None:
    release_free_memory()
    # 64 KB tensors come from the heap (below glibc's mmap threshold). Freed while the last
    # one pins the heap's top, they stay resident until trimmed (or purged).
    chunks = [torch.ones(16 * 1024) for _ in range(8000)]  # 8000 x 64 KB = 500 MB
    keep = chunks[-1]
    del chunks
    held = _rss_kb()
    assert release_free_memory()
    assert _rss_kb() < held - 200 * 1024, (held, _rss_kb())  # at least 200 of the ~500 MB went back
    assert float(keep.sum()) == 16 * 1024


def test_release_free_memory_gives_back_freed_heap() -> None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert release_free_memory() in (True, False)
        return
    freed_heap_goes_back()


# Run in a process with jemalloc preloaded: this file's check, under jemalloc.
JEMALLOC_PROBE = """
import sys
sys.path.insert(0, sys.argv[1])
from core.memory import allocator
import test_memory
assert allocator() == "jemalloc", allocator()
test_memory.freed_heap_goes_back()
print("ok")
"""


def test_release_free_memory_purges_jemalloc_when_it_is_preloaded() -> None:
    lib = jemalloc_path()
    if lib is None:
        pytest.skip("libjemalloc.so.2 is not installed")
    # jemalloc's own decay is switched off, so only release_free_memory can give pages back.
    env = {**os.environ, "LD_PRELOAD": lib, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", JEMALLOC_PROBE, str(Path(__file__).parent)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
