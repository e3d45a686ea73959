"""Shared helpers for the worker tests: databases, rows and worker processes.

Each test module gets its own Postgres database (created here, migrated with
``alembic upgrade head``) and Redis DB 14, so it does not depend on, or disturb, the
fixtures of the API tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import redis
from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_session_factory
from store.migrate import upgrade_head
from store.models import Job, Project, new_id

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/14"

TINY_NER_TASK = {"type": "ner", "labels": ["person", "location"]}
TINY_NER_EXAMPLES = [
    {
        "text": "Barack Obama visited Paris.",
        "entities": [
            {"start": 0, "end": 12, "label": "person"},
            {"start": 21, "end": 26, "label": "location"},
        ],
    },
    {
        "text": "Angela Merkel lives in Berlin.",
        "entities": [
            {"start": 0, "end": 13, "label": "person"},
            {"start": 23, "end": 29, "label": "location"},
        ],
    },
    {
        "text": "Marie Curie worked in Warsaw.",
        "entities": [
            {"start": 0, "end": 11, "label": "person"},
            {"start": 22, "end": 28, "label": "location"},
        ],
    },
    {
        "text": "Tokyo is far from Lima.",
        "entities": [
            {"start": 0, "end": 5, "label": "location"},
            {"start": 18, "end": 22, "label": "location"},
        ],
    },
]


def pg_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def redis_available() -> bool:
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@contextmanager
def fresh_postgres(prefix: str) -> Iterator[str]:
    """A new, migrated database; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    upgrade_head(url)
    try:
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def flush_redis() -> None:
    redis.Redis.from_url(REDIS_URL).flushdb()


def session_factory(url: str) -> sessionmaker[Session]:
    return make_session_factory(make_engine(url))


def insert_job(
    factory: sessionmaker[Session],
    *,
    max_steps: int = 5,
    status: str = "queued",
    examples: list[dict[str, Any]] | None = None,
    base_model: str = "tiny-t5",
    **overrides: Any,
) -> str:
    """A job row as the API would commit it (then the test enqueues it)."""
    job_id = new_id("job")
    with factory() as session:
        if session.get(Project, "proj_worker_tests") is None:
            session.add(Project(id="proj_worker_tests", name="worker tests"))
            session.flush()
        session.add(
            Job(
                id=job_id,
                project_id="proj_worker_tests",
                status=status,
                task=dict(TINY_NER_TASK),
                base_model=base_model,
                method={"type": "fish_dip", "sparsity": 0.05, "refresh_every": 50},
                hyperparameters={"max_steps": max_steps, "batch_size": 2, "eval_every": 10**6},
                seed=7,
                training_examples=examples if examples is not None else TINY_NER_EXAMPLES,
                validation_examples=None,
                total_steps=max_steps,
                **overrides,
            )
        )
        session.commit()
    return job_id


def worker_env(database_url: str, broker_url: str, artifact_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FISHDIP_DATABASE_URL=database_url,
        FISHDIP_BROKER_URL=broker_url,
        FISHDIP_ARTIFACT_URL=str(artifact_dir),
        FISHDIP_DEVICE="cpu",
        FISHDIP_HEARTBEAT_SECONDS="0.5",
        FISHDIP_HEARTBEAT_TIMEOUT_SECONDS="3",
        FISHDIP_REAPER_INTERVAL_SECONDS="1",
        PYTHONPATH=str(ROOT),
        # Two CPU cores are shared by everyone: one torch thread per worker.
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "worker", "--loglevel=INFO"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def job_row(factory: sessionmaker[Session], job_id: str) -> Job:
    with factory() as session:
        job = session.get_one(Job, job_id)
        session.expunge(job)
        return job
