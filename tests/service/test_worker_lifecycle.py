"""store.lifecycle against a real Postgres: the job-row state machine a worker drives."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from worker_support import fresh_postgres, insert_job, job_row, pg_available, session_factory

from store import lifecycle
from store.lifecycle import ModelRecord
from store.models import Job, JobEvent, Model, utcnow
from store.settings import Settings

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(not pg_available(), reason="no Postgres")]

SETTINGS = Settings(heartbeat_seconds=0.5, heartbeat_timeout_seconds=3, max_attempts=2)
RECORD = ModelRecord("models/x.safetensors", 10, 5, "0" * 64, {"f1": 0.5})


@pytest.fixture(scope="module")
def factory() -> Iterator[sessionmaker[Session]]:
    with fresh_postgres("fishdip_lifecycle") as url:
        yield session_factory(url)


def _age_heartbeat(factory: sessionmaker[Session], job_id: str, seconds: float) -> None:
    with factory() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )
        s.commit()


def _count(factory: sessionmaker[Session], model: type, **where: str) -> int:
    with factory() as s:
        q = select(func.count()).select_from(model)
        for k, v in where.items():
            q = q.where(getattr(model, k) == v)
        return int(s.scalar(q) or 0)


def test_claim_runs_once_and_refuses_a_live_job(factory: sessionmaker[Session]) -> None:
    job_id = insert_job(factory)
    first = lifecycle.claim(factory, job_id, "w1", SETTINGS)
    assert first is not None and first.attempts == 1 and first.training_examples
    # A second delivery while the first worker is alive: not ours.
    assert lifecycle.claim(factory, job_id, "w2", SETTINGS) is None
    row = job_row(factory, job_id)
    assert (row.status, row.worker_id, row.attempts) == ("running", "w1", 1)
    assert row.started_at is not None


def test_stale_job_is_taken_over_and_old_worker_loses_its_lease(factory: sessionmaker[Session]) -> None:
    job_id = insert_job(factory)
    assert lifecycle.claim(factory, job_id, "w1", SETTINGS) is not None
    _age_heartbeat(factory, job_id, 10)
    second = lifecycle.claim(factory, job_id, "w2", SETTINGS)
    assert second is not None and second.attempts == 2
    assert lifecycle.heartbeat(factory, job_id, "w1") is False
    assert (
        lifecycle.progress(factory, job_id, "w1", step=3, total_steps=5, eta_seconds=1, train_loss=1.0)
        is False
    )
    assert lifecycle.heartbeat(factory, job_id, "w2") is True
    assert lifecycle.should_stop(factory, job_id, "w1") == (False, True)
    assert lifecycle.should_stop(factory, job_id, "w2") == (False, False)


def test_finish_success_makes_exactly_one_model(factory: sessionmaker[Session]) -> None:
    job_id = insert_job(factory)
    assert lifecycle.claim(factory, job_id, "w1", SETTINGS) is not None
    model_id = lifecycle.finish_success(factory, job_id, RECORD)
    assert model_id is not None and model_id.startswith("model_")
    assert lifecycle.finish_success(factory, job_id, RECORD) is None
    assert lifecycle.claim(factory, job_id, "w3", SETTINGS) is None  # terminal
    row = job_row(factory, job_id)
    assert (row.status, row.model_id) == ("succeeded", model_id)
    assert row.finished_at is not None
    assert _count(factory, Model, job_id=job_id) == 1
    assert lifecycle.fail(factory, job_id, "x", "late failure") is False


def test_progress_events_fail_and_cancel(factory: sessionmaker[Session]) -> None:
    job_id = insert_job(factory)
    assert lifecycle.claim(factory, job_id, "w1", SETTINGS) is not None
    assert lifecycle.progress(factory, job_id, "w1", step=2, total_steps=5, eta_seconds=3.0, train_loss=0.7)
    event_id = lifecycle.add_event(factory, job_id, "metrics", {"step": 2, "loss": 0.7, "lr": 0.01})
    assert event_id.startswith("evt_")
    with pytest.raises(ValueError):
        lifecycle.add_event(factory, job_id, "bogus", {})
    row = job_row(factory, job_id)
    assert (row.step, row.total_steps, row.metrics["train_loss"]) == (2, 5, 0.7)
    assert lifecycle.fail(factory, job_id, "training_error", "boom")
    row = job_row(factory, job_id)
    assert row.status == "failed" and row.error == {"code": "training_error", "message": "boom"}
    types = [
        t
        for (t,) in factory().execute(
            select(JobEvent.type).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)
        )
    ]
    assert types == ["status", "metrics", "status"]

    queued = insert_job(factory, cancel_requested=True)
    assert lifecycle.claim(factory, queued, "w1", SETTINGS) is None
    assert job_row(factory, queued).status == "cancelled"


def test_reaper_requeues_then_gives_up(factory: sessionmaker[Session]) -> None:
    job_id = insert_job(factory)
    sent: list[str] = []
    assert lifecycle.claim(factory, job_id, "w1", SETTINGS) is not None
    _age_heartbeat(factory, job_id, 10)
    done = lifecycle.requeue_stale(factory, SETTINGS, sent.append)
    assert job_id in done["requeued"] and sent.count(job_id) == 1
    assert job_row(factory, job_id).status == "queued"
    # A second sweep finds nothing to do: the job is queued, its message sent.
    assert job_id not in lifecycle.requeue_stale(factory, SETTINGS, sent.append)["requeued"]

    assert lifecycle.claim(factory, job_id, "w2", SETTINGS) is not None  # attempt 2 == max_attempts
    _age_heartbeat(factory, job_id, 10)
    done = lifecycle.requeue_stale(factory, SETTINGS, sent.append)
    assert job_id in done["failed"]
    row = job_row(factory, job_id)
    assert row.status == "failed" and row.error is not None and row.error["code"] == "worker_lost"


def test_reaper_resends_lost_queued_jobs_only_when_queue_is_empty(factory: sessionmaker[Session]) -> None:
    job_id = insert_job(factory)
    with factory() as s:
        s.execute(update(Job).where(Job.id == job_id).values(updated_at=utcnow() - timedelta(minutes=5)))
        s.commit()
    sent: list[str] = []
    assert job_id not in lifecycle.requeue_stale(factory, SETTINGS, sent.append, lambda: 3)["resent"]
    assert job_id in lifecycle.requeue_stale(factory, SETTINGS, sent.append, lambda: 0)["resent"]
    # Re-sent once per minute at most, however often the reaper runs.
    assert job_id not in lifecycle.requeue_stale(factory, SETTINGS, sent.append, lambda: 0)["resent"]
    assert sent.count(job_id) == 1


def test_heartbeat_renews_only_the_holders_lease(factory: sessionmaker[Session]) -> None:
    # Speed is a benchmark's business, not a test's: this checks what a beat does.
    job_id = insert_job(factory)
    assert lifecycle.claim(factory, job_id, "w1", SETTINGS) is not None
    _age_heartbeat(factory, job_id, 30)
    before = job_row(factory, job_id).heartbeat_at
    assert lifecycle.heartbeat(factory, job_id, "w1")
    after = job_row(factory, job_id).heartbeat_at
    assert before is not None and after is not None and after > before
    assert not lifecycle.heartbeat(factory, job_id, "w2")
