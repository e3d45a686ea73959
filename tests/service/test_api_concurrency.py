"""More concurrent requests than database connections must all be answered.

Regression for a deadlock: with the request's session taken in one thread-pool hop and
released in another, 100 concurrent clients against a pool of 15 connections left every
thread-pool thread waiting for a connection held by a request that needed a thread to
finish. A real uvicorn process (the production code path: engine and pool built from
settings) against the Postgres test database, loaded by 100 asyncio clients.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from store.keys import create_key
from store.models import Job, new_id
from store.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 100
GETS_PER_CLIENT = 5
WHOLE_LOAD_S = 30.0  # generous on 2 shared cores; the deadlock never answers at all


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(base_url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("uvicorn did not start")


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "FISHDIP_DATABASE_URL": settings.database_url,
        "FISHDIP_BROKER_URL": settings.broker_url,
        "FISHDIP_ARTIFACT_URL": settings.artifact_url,
        "FISHDIP_DATA_DIR": str(tmp_path),
        "FISHDIP_CACHE_DIR": str(tmp_path / "cache"),
        "FISHDIP_RATE_LIMIT_PER_MINUTE": "100000000",
        # The pool the deadlock was seen with (SQLAlchemy's default 5 + 10), far below the
        # number of clients.
        "FISHDIP_DB_POOL_SIZE": "5",
        "FISHDIP_DB_MAX_OVERFLOW": "10",
    }
    log = (tmp_path / "uvicorn.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.app:app", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, proc)
        yield base_url
    finally:
        # A deadlocked server would not shut down gracefully: kill it.
        proc.kill()
        proc.wait(timeout=30)
        log.close()


def _job_owned_by_new_key(factory: sessionmaker[Session]) -> tuple[str, str]:
    with factory() as session:
        key = create_key(session, f"concurrency-{new_id('p')}")
        job = Job(
            id=new_id("job"), project_id=key.project_id, status="queued", task={"type": "ner"},
            base_model="tiny-t5", method={"type": "fish_dip"}, hyperparameters={}, seed=1,
            training_examples=[],
        )  # fmt: skip
        session.add(job)
        session.commit()
        return key.secret, job.id


async def _load(base_url: str, secret: str, job_id: str) -> list[int | str]:
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    headers = {"Authorization": f"Bearer {secret}"}
    outcomes: list[int | str] = []
    async with httpx.AsyncClient(
        base_url=base_url, headers=headers, limits=limits, timeout=WHOLE_LOAD_S
    ) as client:

        async def one_client() -> None:
            for _ in range(GETS_PER_CLIENT):
                try:
                    response = await client.get(f"/v1/jobs/{job_id}")
                except httpx.HTTPError as exc:
                    outcomes.append(type(exc).__name__)
                    continue
                outcomes.append(response.status_code)

        await asyncio.wait_for(asyncio.gather(*(one_client() for _ in range(CLIENTS))), WHOLE_LOAD_S)
    return outcomes


def test_hundred_concurrent_clients_on_a_small_connection_pool(
    server: str, session_factory: sessionmaker[Session]
) -> None:
    secret, job_id = _job_owned_by_new_key(session_factory)
    started = time.monotonic()
    try:
        outcomes = asyncio.run(_load(server, secret, job_id))
    except TimeoutError:
        pytest.fail(f"{CLIENTS} concurrent clients were not all answered within {WHOLE_LOAD_S:.0f} s")
    elapsed = time.monotonic() - started
    assert len(outcomes) == CLIENTS * GETS_PER_CLIENT
    failed = [o for o in outcomes if o != 200]
    assert not failed, f"{len(failed)} of {len(outcomes)} requests failed: {sorted(set(map(str, failed)))}"
    assert elapsed < WHOLE_LOAD_S
