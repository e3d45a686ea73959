"""Real Celery worker processes, real Redis and Postgres, a real (tiny) model.

One module-scoped pair of workers serves the Postgres tests; the SIGKILL test runs last
because it kills one of them. The embedded mode (SQLite + kombu's SQLAlchemy broker)
has its own worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_support import (
    REDIS_URL,
    ROOT,
    TINY_NER_EXAMPLES,
    TINY_NER_TASK,
    flush_redis,
    fresh_postgres,
    insert_job,
    job_row,
    pg_available,
    redis_available,
    session_factory,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
)

from store.artifacts import artifact_store_from_settings
from store.db import session_scope
from store.keys import create_key
from store.migrate import upgrade_head
from store.models import Job, JobEvent, Model
from store.queue import enqueue_training, queue_depth
from store.settings import Settings

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.slow,
    pytest.mark.skipif(not (pg_available() and redis_available()), reason="needs Postgres and Redis"),
]

WHOLE_PATH_STEPS = 80  # about 4 s on a CPU core; enough for tiny-t5 to recall its data
LONG_JOB_STEPS = 5000  # far more than a test waits for: such jobs end by cancel or kill


@dataclass
class Cluster:
    settings: Settings
    factory: sessionmaker[Session]
    env: dict[str, str]
    workers: list[subprocess.Popen[bytes]]
    log: Path

    def submit(self, **job_kwargs: object) -> str:
        job_id = insert_job(self.factory, **job_kwargs)  # type: ignore[arg-type]
        enqueue_training(job_id, self.settings)  # after the commit, as the API does
        return job_id

    def wait_status(self, job_id: str, statuses: tuple[str, ...], timeout: float) -> Job:
        def done() -> Job | None:
            row = job_row(self.factory, job_id)
            return row if row.status in statuses else None

        try:
            return wait_for(done, timeout, f"{job_id} to reach {statuses}")  # type: ignore[no-any-return]
        except AssertionError:
            print(self.log.read_text()[-4000:])
            raise

    def models_of(self, job_id: str) -> int:
        with self.factory() as s:
            return int(s.scalar(select(func.count()).select_from(Model).where(Model.job_id == job_id)) or 0)

    def status_events(self, job_id: str) -> list[str]:
        with self.factory() as s:
            rows = s.execute(
                select(JobEvent.data)
                .where(JobEvent.job_id == job_id, JobEvent.type == "status")
                .order_by(JobEvent.seq)
            ).scalars()
            return [d["status"] for d in rows]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("celery")
    flush_redis()
    with fresh_postgres("fishdip_worker") as url:
        env = worker_env(url, REDIS_URL, tmp / "artifacts")
        settings = Settings(
            database_url=url,
            broker_url=REDIS_URL,
            artifact_url=str(tmp / "artifacts"),
            heartbeat_seconds=0.5,
            heartbeat_timeout_seconds=3,
            cache_dir=tmp / "cache",
            device="cpu",
        )
        log = tmp / "workers.log"
        workers = [start_worker(env, log), start_worker(env, log)]
        try:
            yield Cluster(settings, session_factory(url), env, workers, log)
        finally:
            for w in workers:
                stop_worker(w)
            flush_redis()


def _running_with_progress(cluster: Cluster, job_id: str) -> Job | None:
    row = job_row(cluster.factory, job_id)
    return row if row.status == "running" and row.step > 0 else None


def _extract(settings: Settings, model: Model, texts: list[str]) -> list[dict[str, object]]:
    from api.serving import ServingCache

    async def go() -> list[dict[str, object]]:
        cache = ServingCache(settings, artifact_store_from_settings(settings))
        try:
            return await cache.extract(model, texts)
        finally:
            await cache.close()

    return asyncio.run(go())


def _assert_full_path(cluster: Cluster, job_id: str) -> None:
    row = cluster.wait_status(job_id, ("succeeded", "failed"), timeout=90)
    assert row.status == "succeeded", row.error
    assert row.model_id is not None and row.finished_at is not None
    assert row.metrics.get("train_loss") is not None
    assert cluster.models_of(job_id) == 1
    with cluster.factory() as s:
        model = s.get_one(Model, row.model_id)
        s.expunge(model)
    assert model.artifact_key == f"models/{job_id}.safetensors"
    assert artifact_store_from_settings(cluster.settings).exists(model.artifact_key)
    # Leading spaces and non-ASCII before the spans: offsets must index the text as sent.
    texts = ["  Barack Obama visited Paris.", "Zoë: Barack Obama visited Paris.", "Tokyo is far from Lima."]
    results = _extract(cluster.settings, model, texts)
    assert len(results) == len(texts)
    found = 0
    for text, result in zip(texts, results, strict=True):
        assert isinstance(result["entities"], list)
        for ent in result["entities"]:  # type: ignore[attr-defined]
            assert text[ent["start"] : ent["end"]] == ent["text"]
            assert ent["label"] in ("person", "location")
            found += 1
    assert found > 0, results  # trained for enough steps to recall its training sentences


def test_whole_path_postgres_redis(cluster: Cluster) -> None:
    job_id = cluster.submit(max_steps=WHOLE_PATH_STEPS)
    _assert_full_path(cluster, job_id)
    with cluster.factory() as s:
        types = set(s.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id)))
    assert {"status", "metrics", "mask_refresh", "examples"} <= types
    assert cluster.status_events(job_id) == ["running", "succeeded"]


def test_task_delivered_twice_makes_one_model(cluster: Cluster) -> None:
    job_id = insert_job(cluster.factory, max_steps=30)
    enqueue_training(job_id, cluster.settings)
    enqueue_training(job_id, cluster.settings)  # both idle workers get a copy at once
    cluster.wait_status(job_id, ("succeeded", "failed"), timeout=90)
    wait_for(lambda: queue_depth(cluster.settings) == 0, 10, "the queue to drain")
    enqueue_training(job_id, cluster.settings)  # a third, late copy: a no-op too
    wait_for(lambda: queue_depth(cluster.settings) == 0, 10, "the late copy to be consumed")
    row = job_row(cluster.factory, job_id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert cluster.models_of(job_id) == 1
    assert cluster.status_events(job_id) == ["running", "succeeded"]


def test_cancel_stops_a_running_job_and_worker_takes_the_next(cluster: Cluster) -> None:
    long_job = cluster.submit(max_steps=LONG_JOB_STEPS)
    running = wait_for(lambda: _running_with_progress(cluster, long_job), 60, "the long job to train")
    with cluster.factory() as s:  # what POST /v1/jobs/{id}/cancel does to a running job
        s.execute(update(Job).where(Job.id == long_job).values(cancel_requested=True, status="cancelling"))
        s.commit()
    row = cluster.wait_status(long_job, ("cancelled", "failed", "succeeded"), timeout=10)
    assert row.status == "cancelled" and row.step < LONG_JOB_STEPS
    assert cluster.models_of(long_job) == 0
    # Both workers are idle again and take one job each (prefetch 1): the one that ran
    # the cancelled job must be among them.
    nexts = [cluster.submit(max_steps=20), cluster.submit(max_steps=20)]
    owners = set()
    for job_id in nexts:
        row = cluster.wait_status(job_id, ("succeeded", "failed"), timeout=60)
        assert row.status == "succeeded", row.error
        owners.add(row.worker_id)
    assert running.worker_id in owners


def test_sigkill_mid_training_still_succeeds_exactly_once(cluster: Cluster) -> None:
    steps = 200
    job_id = cluster.submit(max_steps=steps)
    row = wait_for(lambda: _running_with_progress(cluster, job_id), 60, "the job to train")
    assert row.worker_id is not None
    victim_pid = int(row.worker_id.split(":")[1])
    victim = next(w for w in cluster.workers if w.pid == victim_pid)
    os.kill(victim_pid, signal.SIGKILL)
    victim.wait()
    # The survivor's reaper sees the stale heartbeat (3 s), re-queues, and trains it again.
    row = cluster.wait_status(job_id, ("succeeded", "failed"), timeout=120)
    assert row.status == "succeeded", row.error
    assert row.attempts == 2 and row.worker_id is not None
    assert int(row.worker_id.split(":")[1]) != victim_pid
    assert cluster.models_of(job_id) == 1
    events = cluster.status_events(job_id)
    assert events.count("succeeded") == 1 and events.count("running") == 2 and "queued" in events


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_whole_path_embedded_serve(tmp_path: Path) -> None:
    """``fishdip serve``: SQLite, kombu's SQLite broker, the API and one worker, over HTTP."""
    db = f"sqlite:///{tmp_path / 'fishdip.db'}"
    upgrade_head(db)
    with session_scope(session_factory(db)) as session:
        secret = create_key(session, "embedded").secret
    env = worker_env(
        db,
        f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        tmp_path / "artifacts",
        FISHDIP_CACHE_DIR=str(tmp_path / "cache"),
    )
    port = _free_port()
    log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        # A terminal's Ctrl-C is what the test plays. A test run started in the background by a
        # shell (``make test &``) inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt; give the child the default disposition a terminal would.
        preexec_fn=_default_sigint,
    )
    try:
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=60, headers={"Authorization": f"Bearer {secret}"}
        )
        wait_for(lambda: _healthy(client), 60, "the API to start")
        created = client.post(
            "/v1/jobs",
            json={
                "task": TINY_NER_TASK,
                "base_model": "tiny-t5",
                "training_data": {"examples": TINY_NER_EXAMPLES},
                "method": {"type": "fish_dip", "sparsity": 0.05, "refresh_every": 50},
                "hyperparameters": {"max_steps": WHOLE_PATH_STEPS, "batch_size": 2},
            },
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]

        def finished() -> dict[str, Any] | None:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            return job if job["status"] in ("succeeded", "failed", "cancelled") else None

        try:
            job = wait_for(finished, 120, f"{job_id} to finish", interval=0.5)
        except AssertionError:
            print((tmp_path / "serve.log").read_text()[-4000:])
            raise
        assert job["status"] == "succeeded", job
        stats = client.get(f"/v1/jobs/{job_id}/examples").json()["data"]
        assert len(stats) == len(TINY_NER_EXAMPLES)
        assert all(row["final_loss"] is not None and row["refresh_losses"] for row in stats), stats
        texts = ["  Barack Obama visited Paris.", "Zoë: Barack Obama visited Paris."]
        answer = client.post(f"/v1/models/{job['model_id']}/extract", json={"texts": texts})
        assert answer.status_code == 200, answer.text
        results = answer.json()["results"]
        spans = [(t, e) for t, r in zip(texts, results, strict=True) for e in r["entities"]]
        assert spans, results
        for text, ent in spans:
            assert text[ent["start"] : ent["end"]] == ent["text"]
    finally:
        serve.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            assert serve.wait(timeout=30) is not None
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
    assert _children_gone(serve.pid)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _healthy(client: httpx.Client) -> bool:
    try:
        return client.get("/healthz").status_code == 200
    except httpx.HTTPError:
        return False


def _children_gone(pid: int) -> bool:
    """serve stopped its API and worker too: nothing is left in its process group."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    time.sleep(2)
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return True
    return False
