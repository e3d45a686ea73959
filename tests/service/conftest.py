"""Shared fixtures for the service tests (API, store, worker).

Databases (built once per test session with ``alembic upgrade head``, dropped at the end):
    pg_url          URL of a fresh, uniquely named Postgres database (postgresql+psycopg://)
    sqlite_url      URL of a fresh SQLite file database
    engine          SQLAlchemy engine on pg_url (session scope)
    session_factory sessionmaker bound to ``engine`` (expire_on_commit=False)
    db              a Session for arranging/inspecting rows; commit yourself, closed after the test

Service:
    settings        a ``store.settings.Settings`` for pg_url, Redis db 15 as the broker
                    (``redis://127.0.0.1:6379/15``), a temporary local artifact directory
    artifacts       the LocalArtifactStore of ``settings``
    enqueued        list of job ids the app enqueued (each is also really sent to the broker)
    app             the FastAPI app from ``api.app.create_app(settings, ...)``
    client          a ``fastapi.testclient.TestClient`` on ``app`` (lifespan run), with no auth header
    api_key         a fresh project's API key secret (each test gets its own project)
    auth            {"Authorization": "Bearer <api_key>"}
    other_api_key   a second, different project's key secret
    other_auth      headers for other_api_key
    make_key        factory: make_key(project_name) -> secret

Helpers live in ``api_support.py`` (``from api_support import ner_job, count_rows``):
``ner_job(**overrides)`` builds a valid job body on the "tiny-t5" base;
``count_rows(session_factory)`` counts rows in every table.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store.artifacts import LocalArtifactStore
from store.db import make_engine, make_session_factory
from store.keys import create_key
from store.migrate import upgrade_head
from store.settings import Settings

ADMIN_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
TEST_BROKER = "redis://127.0.0.1:6379/15"


def _admin(sql: str) -> None:
    with psycopg.connect(ADMIN_PG, autocommit=True) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    name = f"fishdip_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        upgrade_head(url)
        yield url
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'fishdip.db'}"
    upgrade_head(url)
    return url


@pytest.fixture(scope="session")
def engine(pg_url: str) -> Iterator[Engine]:
    eng = make_engine(pg_url, pool_size=10, max_overflow=20)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def db(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as session:
        yield session


@pytest.fixture
def settings(pg_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=pg_url,
        broker_url=TEST_BROKER,
        artifact_url=str(tmp_path / "artifacts"),
        data_dir=tmp_path,
        rate_limit_per_minute=100_000,
        max_body_bytes=256 * 1024,
    )


@pytest.fixture
def artifacts(settings: Settings) -> LocalArtifactStore:
    return LocalArtifactStore(settings.artifact_url)


@pytest.fixture
def enqueued(settings: Settings) -> list[str]:
    return []


def build_app(settings: Settings, engine: Engine, enqueued: list[str], artifacts: Any) -> FastAPI:
    from api.app import create_app
    from store.queue import enqueue_training

    def enqueue(job_id: str) -> None:
        enqueued.append(job_id)
        enqueue_training(job_id, settings)

    return create_app(settings, engine=engine, enqueue=enqueue, artifacts=artifacts)


@pytest.fixture
def app(settings: Settings, engine: Engine, enqueued: list[str], artifacts: LocalArtifactStore) -> FastAPI:
    return build_app(settings, engine, enqueued, artifacts)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def make_key(session_factory: sessionmaker[Session]) -> Callable[[str], str]:
    def make(project: str) -> str:
        with session_factory() as session:
            secret = create_key(session, project).secret
            session.commit()
        return secret

    return make


@pytest.fixture
def api_key(make_key: Callable[[str], str]) -> str:
    return make_key(f"proj-a-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def other_api_key(make_key: Callable[[str], str]) -> str:
    return make_key(f"proj-b-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def auth(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture
def other_auth(other_api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {other_api_key}"}
