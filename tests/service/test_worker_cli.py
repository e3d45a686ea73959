"""``fishdip serve``'s first-run key: created once, readable only by its owner, valid; the
worker's allocator."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from store.db import make_engine, make_session_factory, session_scope
from store.keys import authenticate
from store.migrate import upgrade_head
from store.settings import get_settings
from worker.cli import bootstrap_key


def test_bootstrap_key_creates_one_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'fishdip.db'}"
    monkeypatch.setenv("FISHDIP_DATABASE_URL", url)
    monkeypatch.setenv("FISHDIP_DATA_DIR", str(tmp_path / "data"))
    get_settings.cache_clear()
    try:
        upgrade_head(url)
        bootstrap_key()
        key_file = tmp_path / "data" / "api-key"
        secret = key_file.read_text().strip()
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        bootstrap_key()  # a second start keeps the first key
        assert key_file.read_text().strip() == secret
        engine = make_engine(url)
        with session_scope(make_session_factory(engine)) as session:
            assert authenticate(session, secret) is not None
        engine.dispose()
    finally:
        get_settings.cache_clear()


def test_eta_follows_recent_steps_not_start_up() -> None:
    from worker.tasks import StepRate

    rate = StepRate(smoothing=0.5)
    rate.update(1, 100.0)  # step 1 came after 100 s of loading and the first mask
    assert rate.eta(1, 10) is None
    rate.update(2, 102.0)
    rate.update(3, 104.0)
    assert rate.eta(3, 10) == 14.0


def _allocator_of_a_worker(setting: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FISHDIP_ALLOCATOR_PRELOADED")}
    out = subprocess.run(
        [sys.executable, "-m", "worker.cli", "allocator"],
        env={**env, "FISHDIP_ALLOCATOR": setting},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_worker_runs_under_jemalloc_where_installed_unless_told_not_to() -> None:
    from core.memory import jemalloc_path

    assert _allocator_of_a_worker("system") == "system"
    if jemalloc_path() is None:
        pytest.skip("libjemalloc.so.2 is not installed")
    assert _allocator_of_a_worker("auto") == "jemalloc"  # re-executed once, with the library preloaded
