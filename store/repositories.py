"""All SQL the API runs. Repositories flush, never commit: the request's session does.

Every read of a tenant's resource takes the project id, so one project's key can never
reach another project's rows, whatever id it guesses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer

from store.models import ApiKey, Dataset, Job, JobEvent, Model, Project, new_id, utcnow

T = TypeVar("T", Dataset, Job, Model)

TERMINAL_STATUSES = ("succeeded", "failed", "cancelled")
ALL_STATUSES = ("validating", "queued", "running", "cancelling", "succeeded", "failed", "cancelled")


class UnknownCursor(LookupError):
    """The ``after`` id of a page is not one of this project's rows."""


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def _newest_first_page(
    session: Session, cls: type[T], stmt: Select[Any], after: str | None, limit: int
) -> Page[T]:
    """Cursor page ordered by (created_at desc, id desc); the cursor is the last id seen.

    ``stmt`` already restricts to the project, so a cursor from another project is unknown.
    """
    if after is not None:
        cursor_row = session.execute(
            stmt.with_only_columns(cls.created_at, cls.id).where(cls.id == after)
        ).first()
        if cursor_row is None:
            raise UnknownCursor(after)
        created, cid = cursor_row
        stmt = stmt.where(or_(cls.created_at < created, and_(cls.created_at == created, cls.id < cid)))
    ordered = stmt.order_by(cls.created_at.desc(), cls.id.desc()).limit(limit + 1)
    rows: list[T] = list(session.scalars(ordered))
    return Page(rows[:limit], len(rows) > limit)


class ProjectRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, project_id: str) -> Project | None:
        return self.session.get(Project, project_id)


class ApiKeyRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def active_by_hash(self, key_hash: str) -> ApiKey | None:
        stmt = select(ApiKey).where(ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None))
        return self.session.scalars(stmt).first()


class DatasetRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, dataset: Dataset) -> Dataset:
        self.session.add(dataset)
        self.session.flush()
        return dataset

    def get(self, project_id: str, dataset_id: str) -> Dataset | None:
        stmt = select(Dataset).where(Dataset.project_id == project_id, Dataset.id == dataset_id)
        return self.session.scalars(stmt).first()

    def page(self, project_id: str, after: str | None, limit: int) -> Page[Dataset]:
        stmt = select(Dataset).where(Dataset.project_id == project_id)
        return _newest_first_page(self.session, Dataset, stmt, after, limit)

    def delete(self, dataset: Dataset) -> None:
        self.session.delete(dataset)
        self.session.flush()


# A job's examples (up to max_examples texts) are only needed to train it and for its
# per-example statistics; loading them on every poll or page of jobs would parse them
# each time. Deferred, they load on first access while the session is open.
_WITHOUT_EXAMPLES = (defer(Job.training_examples), defer(Job.validation_examples))


class JobRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, project_id: str, job_id: str) -> Job | None:
        stmt = select(Job).where(Job.project_id == project_id, Job.id == job_id).options(*_WITHOUT_EXAMPLES)
        return self.session.scalars(stmt).first()

    def by_idempotency_key(self, project_id: str, key: str) -> Job | None:
        stmt = select(Job).where(Job.project_id == project_id, Job.idempotency_key == key)
        return self.session.scalars(stmt).first()

    def insert(self, job: Job) -> bool:
        """Insert inside a savepoint; False when the (project, idempotency key) is taken.

        The savepoint keeps the request's transaction usable after the unique violation,
        so the caller can read the winner's row in the same session.
        """
        try:
            with self.session.begin_nested():
                self.session.add(job)
                self.session.flush()
        except IntegrityError:
            if job.idempotency_key is None:
                raise
            return False
        return True

    def page(self, project_id: str, status: str | None, after: str | None, limit: int) -> Page[Job]:
        stmt = select(Job).where(Job.project_id == project_id).options(*_WITHOUT_EXAMPLES)
        if status is not None:
            stmt = stmt.where(Job.status == status)
        return _newest_first_page(self.session, Job, stmt, after, limit)

    def transition(self, job_id: str, from_status: str, values: dict[str, Any]) -> bool:
        """Conditional UPDATE; True when this call made the change (it races with workers)."""
        stmt = (
            update(Job)
            .where(Job.id == job_id, Job.status == from_status)
            .values(**values, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        changed = self.session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
        return bool(changed)

    def refresh(self, job: Job) -> Job:
        self.session.refresh(job)
        return job

    def count_by_status(self) -> dict[str, int]:
        rows = self.session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
        return {status: int(n) for status, n in rows}


class EventRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, job_id: str, type_: str, data: dict[str, Any], when: datetime | None = None) -> JobEvent:
        event = JobEvent(id=new_id("evt"), job_id=job_id, type=type_, data=data, created_at=when or utcnow())
        self.session.add(event)
        self.session.flush()
        return event

    def page(self, job_id: str, after: str | None, limit: int) -> tuple[list[JobEvent], bool]:
        """Oldest first (a log is read forwards); the cursor is the last event id seen."""
        stmt = select(JobEvent).where(JobEvent.job_id == job_id)
        if after is not None:
            seq = self.session.scalar(
                select(JobEvent.seq).where(JobEvent.job_id == job_id, JobEvent.id == after)
            )
            if seq is None:
                raise UnknownCursor(after)
            stmt = stmt.where(JobEvent.seq > seq)
        rows = list(self.session.scalars(stmt.order_by(JobEvent.seq).limit(limit + 1)))
        return rows[:limit], len(rows) > limit

    def of_types(self, job_id: str, types: Sequence[str]) -> list[JobEvent]:
        stmt = (
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type.in_(types)).order_by(JobEvent.seq)
        )
        return list(self.session.scalars(stmt))


class ModelRepo:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, project_id: str, model_id: str) -> Model | None:
        stmt = select(Model).where(Model.project_id == project_id, Model.id == model_id)
        return self.session.scalars(stmt).first()

    def page(self, project_id: str, after: str | None, limit: int) -> Page[Model]:
        stmt = select(Model).where(Model.project_id == project_id)
        return _newest_first_page(self.session, Model, stmt, after, limit)

    def delete(self, model: Model) -> None:
        # The job keeps pointing at a model that is gone; clear it so reads stay consistent.
        self.session.execute(
            update(Job)
            .where(Job.id == model.job_id, Job.model_id == model.id)
            .values(model_id=None)
            .execution_options(synchronize_session=False)
        )
        self.session.delete(model)
        self.session.flush()
