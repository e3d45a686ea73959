"""Worker-side job transitions, each in its own short transaction.

A worker never holds a transaction open while it trains: every function here opens a
session, makes one change and commits. State changes that race with other processes
(claim, heartbeat, requeue) are single conditional UPDATEs whose row count says who won,
which is atomic on Postgres and on SQLite alike, so no row locks are held across calls.

Ownership of a running job is a lease: ``worker_id`` plus a heartbeat. A worker that
loses its lease (the reaper gave the job to another worker) sees its heartbeat rejected
and stops; it never writes progress over the new owner's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from store.db import session_scope
from store.models import Job, JobEvent, Model, new_id, utcnow
from store.settings import Settings

log = logging.getLogger(__name__)

SessionFactory = sessionmaker[Session]

TERMINAL = ("succeeded", "failed", "cancelled")
ACTIVE = ("running", "cancelling")
EVENT_TYPES = frozenset({"status", "metrics", "evaluation", "mask_refresh", "examples"})
# A queued job with no pending message (the enqueue after commit failed, or the broker
# lost it) is re-sent once it has waited this long and the queue is empty.
STALE_QUEUED_SECONDS = 60.0


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to train, copied out of the row so no session stays open."""

    id: str
    project_id: str
    task: dict[str, Any]
    base_model: str
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    seed: int
    training_examples: list[Any]
    validation_examples: list[Any] | None
    attempts: int
    worker_id: str


@dataclass(frozen=True)
class ModelRecord:
    """The result of a training run, as stored on the Model row."""

    artifact_key: str
    artifact_bytes: int
    parameters_changed: int
    sha256: str
    metrics: dict[str, Any]
    steps: int | None = None
    train_loss: float | None = None


def _status_event(session: Session, job_id: str, status: str, **extra: Any) -> None:
    session.add(JobEvent(id=new_id("evt"), job_id=job_id, type="status", data={"status": status, **extra}))


def claim(factory: SessionFactory, job_id: str, worker_id: str, settings: Settings) -> ClaimedJob | None:
    """Take the job for this worker, or return None when it is not ours to run.

    Claimable: ``queued``, or ``running``/``cancelling`` whose heartbeat is stale (its
    worker died). Not claimable: terminal, already has a model, or alive elsewhere. This
    is what makes a twice-delivered task harmless.
    """
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.heartbeat_timeout_seconds)
    has_model = exists().where(Model.job_id == Job.id)
    stale_active = and_(
        Job.status.in_(ACTIVE), or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)
    )
    with session_scope(factory) as session:
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, or_(Job.status == "queued", stale_active), ~has_model)
            .values(
                status="running",
                attempts=Job.attempts + 1,
                worker_id=worker_id,
                heartbeat_at=now,
                started_at=func.coalesce(Job.started_at, now),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return None
        job = session.get_one(Job, job_id)
        if job.cancel_requested:
            # Cancelled while waiting in the queue: finish it here rather than train.
            _finish(session, job, "cancelled")
            return None
        _status_event(session, job_id, "running", attempt=job.attempts, worker_id=worker_id)
        return ClaimedJob(
            id=job.id,
            project_id=job.project_id,
            task=dict(job.task),
            base_model=job.base_model,
            method=dict(job.method),
            hyperparameters=dict(job.hyperparameters),
            seed=int(job.seed),
            training_examples=list(job.training_examples),
            validation_examples=None if job.validation_examples is None else list(job.validation_examples),
            attempts=job.attempts,
            worker_id=worker_id,
        )


def _owned(job_id: str, worker_id: str) -> Any:
    return and_(Job.id == job_id, Job.worker_id == worker_id, Job.status.in_(ACTIVE))


def heartbeat(factory: SessionFactory, job_id: str, worker_id: str) -> bool:
    """Renew the lease. False means the job is no longer this worker's: stop training."""
    with session_scope(factory) as session:
        result = session.execute(
            update(Job)
            .where(_owned(job_id, worker_id))
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def should_stop(factory: SessionFactory, job_id: str, worker_id: str) -> tuple[bool, bool]:
    """(cancel requested, lease lost) for the job, read in one short query."""
    with session_scope(factory) as session:
        row = session.execute(
            select(Job.cancel_requested, Job.status, Job.worker_id).where(Job.id == job_id)
        ).one_or_none()
    if row is None:
        return False, True
    cancel, status, owner = row
    lost = owner != worker_id or status not in ACTIVE
    return bool(cancel) or status == "cancelling", lost


def progress(
    factory: SessionFactory,
    job_id: str,
    worker_id: str,
    *,
    step: int,
    total_steps: int,
    eta_seconds: float | None,
    train_loss: float | None,
) -> bool:
    """Record training progress; False when the lease is lost (nothing written)."""
    with session_scope(factory) as session:
        job = session.execute(select(Job).where(_owned(job_id, worker_id))).scalar_one_or_none()
        if job is None:
            return False
        job.step = step
        job.total_steps = total_steps
        job.eta_seconds = eta_seconds
        # A new dict: SQLAlchemy does not see in-place mutation of a JSON column.
        job.metrics = {**(job.metrics or {}), "train_loss": train_loss}
        job.heartbeat_at = utcnow()
        return True


def set_validation_metrics(
    factory: SessionFactory, job_id: str, worker_id: str, metrics: dict[str, Any]
) -> None:
    with session_scope(factory) as session:
        job = session.execute(select(Job).where(_owned(job_id, worker_id))).scalar_one_or_none()
        if job is not None:
            job.metrics = {**(job.metrics or {}), "validation": metrics}


def add_event(factory: SessionFactory, job_id: str, type_: str, data: dict[str, Any]) -> str:
    """Append one typed event to the job's stream; returns its ``evt_...`` id."""
    if type_ not in EVENT_TYPES:
        raise ValueError(f"unknown event type {type_!r}")
    event_id = new_id("evt")
    with session_scope(factory) as session:
        session.add(JobEvent(id=event_id, job_id=job_id, type=type_, data=data))
    return event_id


def _finish(session: Session, job: Job, status: str, **extra: Any) -> None:
    job.status = status
    job.finished_at = utcnow()
    job.eta_seconds = None
    _status_event(session, job.id, status, **extra)


def finish_success(factory: SessionFactory, job_id: str, record: ModelRecord) -> str | None:
    """Insert the Model and mark the job succeeded in ONE transaction.

    Returns the new model id, or None when the job already has a model or is terminal
    (a duplicate run finished second): then nothing changes.
    """
    model_id = new_id("model")
    try:
        with session_scope(factory) as session:
            job = session.execute(select(Job).where(Job.id == job_id).with_for_update()).scalar_one_or_none()
            if job is None or job.status in TERMINAL or job.model_id is not None:
                return None
            if session.scalar(select(Model.id).where(Model.job_id == job_id)) is not None:
                return None
            session.add(
                Model(
                    id=model_id,
                    project_id=job.project_id,
                    job_id=job_id,
                    base_model=job.base_model,
                    task=dict(job.task),
                    metrics=record.metrics,
                    artifact_key=record.artifact_key,
                    artifact_bytes=record.artifact_bytes,
                    parameters_changed=record.parameters_changed,
                    sha256=record.sha256,
                )
            )
            session.flush()  # the unique job_id constraint fires here, before the status change
            job.model_id = model_id
            metrics = dict(job.metrics or {})
            if record.metrics:
                metrics["validation"] = record.metrics
            if record.train_loss is not None:
                metrics["train_loss"] = record.train_loss
            job.metrics = metrics
            # Early stopping ends before total_steps: report the steps actually run.
            job.step = record.steps if record.steps is not None else max(job.step, job.total_steps)
            _finish(session, job, "succeeded", model_id=model_id)
    except IntegrityError:
        # Another run of the same job inserted its model between our check and insert.
        log.info("job %s already has a model; this run's result is dropped", job_id)
        return None
    return model_id


def fail(factory: SessionFactory, job_id: str, code: str, message: str) -> bool:
    """Mark the job failed with ``{"code", "message"}`` unless it already finished."""
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        if job is None or job.status in TERMINAL:
            return False
        job.error = {"code": code, "message": message[:2000]}
        _finish(session, job, "failed", error=job.error)
        return True


def mark_cancelled(factory: SessionFactory, job_id: str) -> bool:
    with session_scope(factory) as session:
        job = session.get(Job, job_id)
        if job is None or job.status in TERMINAL:
            return False
        _finish(session, job, "cancelled")
        return True


def _stale_running(session: Session, stale_before: datetime) -> list[tuple[str, int, str]]:
    rows = session.execute(
        select(Job.id, Job.attempts, Job.status).where(
            Job.status.in_(ACTIVE), or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before)
        )
    ).all()
    return [(r[0], int(r[1]), str(r[2])) for r in rows]


def _release(factory: SessionFactory, job_id: str, stale_before: datetime, settings: Settings) -> str | None:
    """Take one stale job away from its dead worker. Returns "requeued", "failed",
    "cancelled", or None when another reaper (or the worker itself) got there first."""
    with session_scope(factory) as session:
        job = session.execute(
            select(Job)
            .where(
                Job.id == job_id,
                Job.status.in_(ACTIVE),
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale_before),
            )
            .with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if job is None:
            return None
        # Re-check by conditional update so two reapers on SQLite cannot both act.
        won = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.heartbeat_at == job.heartbeat_at, Job.status == job.status)
            .values(heartbeat_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            return None
        session.refresh(job)
        if job.status == "cancelling" or job.cancel_requested:
            _finish(session, job, "cancelled", reason="worker_lost")
            return "cancelled"
        if job.attempts >= settings.max_attempts:
            job.error = {
                "code": "worker_lost",
                "message": f"the worker stopped responding {job.attempts} times; giving up",
            }
            _finish(session, job, "failed", error=job.error)
            return "failed"
        job.status = "queued"
        job.worker_id = None
        job.heartbeat_at = None
        _status_event(session, job_id, "queued", reason="worker_lost", attempts=job.attempts)
        return "requeued"


def _requeue_lost_messages(
    factory: SessionFactory, send: Callable[[str], None], depth: int | None
) -> list[str]:
    """Re-send queued jobs that have waited over a minute while the queue is empty: their
    message is gone (enqueue failed after commit, or the broker lost it)."""
    if depth != 0:
        return []
    cutoff = utcnow() - timedelta(seconds=STALE_QUEUED_SECONDS)
    sent: list[str] = []
    with session_scope(factory) as session:
        candidates = session.execute(
            select(Job.id, Job.updated_at).where(Job.status == "queued", Job.updated_at < cutoff)
        ).all()
    for job_id, updated_at in candidates:
        with session_scope(factory) as session:
            # Bumping updated_at claims the re-send and spaces the next one a minute out.
            won = session.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == "queued", Job.updated_at == updated_at)
                .values(updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )
        if won.rowcount == 1:  # type: ignore[attr-defined]
            send(job_id)
            sent.append(job_id)
    return sent


def requeue_stale(
    factory: SessionFactory,
    settings: Settings,
    send: Callable[[str], None],
    queue_depth: Callable[[], int | None] = lambda: None,
) -> dict[str, list[str]]:
    """The reaper. Returns what it did, by outcome, for logging and tests."""
    stale_before = datetime.now(timezone.utc) - timedelta(seconds=settings.heartbeat_timeout_seconds)
    outcome: dict[str, list[str]] = {"requeued": [], "failed": [], "cancelled": [], "resent": []}
    with session_scope(factory) as session:
        stale = _stale_running(session, stale_before)
    for job_id, _attempts, _status in stale:
        result = _release(factory, job_id, stale_before, settings)
        if result is not None:
            outcome[result].append(job_id)
        if result == "requeued":
            send(job_id)  # after the commit in _release: enqueue after commit
    outcome["resent"] = _requeue_lost_messages(factory, send, queue_depth())
    return outcome
