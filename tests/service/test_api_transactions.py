"""How requests use the database: an extraction holds no admission slot while it runs, and
the service survives its database connections being killed (a Postgres restart)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from api_support import add_model, ner_job
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from store.artifacts import LocalArtifactStore
from store.db import make_engine, make_session_factory
from store.models import Model
from store.settings import Settings

ADMIN_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


class SlowServing:
    """Stands in for the serving cache: an extraction that lasts until the test lets it end
    (a real one needs a model on the CPU; what is tested here is the request around it)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.finish = asyncio.Event()

    async def extract(self, model: Model, inputs: list[Any]) -> list[dict[str, Any]]:
        self.started.set()
        await self.finish.wait()
        return [{"entities": []} for _ in inputs]

    def evict(self, model_id: str) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.fixture
def app_name() -> str:
    return f"fishdip-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def one_slot_engine(pg_url: str, app_name: str) -> Iterator[Engine]:
    # One pooled connection, so one admission slot: a request that kept its slot through an
    # extraction would make every other request wait.
    eng = make_engine(
        pg_url,
        ping_idle_seconds=0.2,
        pool_size=1,
        max_overflow=1,
        connect_args={"application_name": app_name},
    )
    yield eng
    eng.dispose()


def _app(settings: Settings, engine: Engine, artifacts: LocalArtifactStore) -> FastAPI:
    return create_app(settings, engine=engine, enqueue=lambda _job_id: None, artifacts=artifacts)


def test_extraction_gives_back_its_slot_so_polling_goes_on(
    settings: Settings,
    one_slot_engine: Engine,
    artifacts: LocalArtifactStore,
    auth: dict[str, str],
    tmp_path: Path,
) -> None:
    app = _app(settings, one_slot_engine, artifacts)
    serving = SlowServing()
    app.state.serving = serving
    factory = make_session_factory(one_slot_engine)

    async def scenario() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=auth) as c:
            job_id = (await c.post("/v1/jobs", json=ner_job())).json()["id"]
            model = await asyncio.to_thread(add_model, factory, job_id, artifacts, tmp_path)
            model_id = model.id
            extraction = asyncio.create_task(
                c.post(f"/v1/models/{model_id}/extract", json={"texts": ["Ada."]})
            )
            await asyncio.wait_for(serving.started.wait(), 10)
            # The extraction is running: polling must not wait for it.
            poll = await asyncio.wait_for(c.get(f"/v1/jobs/{job_id}"), 10)
            assert poll.status_code == 200
            serving.finish.set()
            done = await asyncio.wait_for(extraction, 10)
            assert done.status_code == 200 and done.json()["model_id"] == model_id

    asyncio.run(scenario())


def test_requests_survive_killed_database_connections(
    settings: Settings,
    one_slot_engine: Engine,
    app_name: str,
    artifacts: LocalArtifactStore,
    auth: dict[str, str],
) -> None:
    with TestClient(_app(settings, one_slot_engine, artifacts)) as client:
        job_id = client.post("/v1/jobs", json=ner_job(), headers=auth).json()["id"]
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200
        with psycopg.connect(ADMIN_PG, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (app_name,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1  # the pooled connection was really cut
        time.sleep(0.3)  # past ping_idle_seconds: the dead connection is found on checkout
        r = client.get(f"/v1/jobs/{job_id}", headers=auth)
        assert r.status_code == 200 and r.json()["id"] == job_id
