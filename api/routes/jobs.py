"""/v1/jobs: create, list, read, cancel, events, per-example statistics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Header, Request, Response

from api.convert import event_read, job_read
from api.deps import CallerDep, SessionDep, SettingsDep, TransactionalRoute, after_commit
from api.errors import ErrorDetail, NotFound, ValidationFailed, errors
from api.routes.common import After, Limit
from api.schemas import EventRead, ExamplesRead, JobCreate, JobRead, JobStatus, Page
from api.services import jobs as service
from store.repositories import EventRepo, JobRepo, UnknownCursor

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=TransactionalRoute)


def unknown_cursor(after: str) -> ValidationFailed:
    return ValidationFailed(
        "unknown cursor", [ErrorDetail(loc="/after", message=f"no item {after!r}", location="query")]
    )


@router.post(
    "",
    status_code=201,
    response_model=JobRead,
    responses={**errors(409), 200: {"model": JobRead, "description": "idempotent repeat: the existing job"}},
    summary="Create a training job",
    description=(
        "Validates the whole request (every problem listed), resolves every 'auto' hyperparameter, "
        "stores the job as queued and then enqueues it. With an Idempotency-Key, a repeat of the same "
        "body returns the same job (200); a different body under the key is a 409. If the broker is "
        "down at that moment the job stays queued and the workers' reaper re-sends it."
    ),
)
def create_job(
    body: JobCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    caller: CallerDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobRead:
    job, created = service.create_job(session, caller.project_id, body, settings, idempotency_key)
    if created:
        enqueue = request.app.state.enqueue
        # Enqueue after commit: the worker must find the row it is sent.
        after_commit(session, lambda: _enqueue(enqueue, job.id))
    else:
        response.status_code = 200
    return job_read(job)


def _enqueue(enqueue: Callable[[str], None], job_id: str) -> None:
    try:
        enqueue(job_id)
    except Exception:
        log.warning("enqueue of %s failed; the reaper will re-send it", job_id, exc_info=True)


@router.get("", response_model=Page[JobRead], responses=errors(), summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    limit: Limit = 20,
    after: After = None,
    status: JobStatus | None = None,
) -> Page[JobRead]:
    try:
        page = JobRepo(session).page(caller.project_id, status, after, limit)
    except UnknownCursor:
        raise unknown_cursor(after or "") from None
    return Page[JobRead](data=[job_read(j) for j in page.items], has_more=page.has_more)


@router.get("/{job_id}", response_model=JobRead, responses=errors(), summary="Read a job")
def get_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobRead:
    job = JobRepo(session).get(caller.project_id, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job_read(job)


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses=errors(409),
    summary="Cancel a job",
    description="queued: cancelled at once; running: cancelling until the worker stops; finished: 409.",
)
def cancel_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobRead:
    return job_read(service.cancel_job(session, caller.project_id, job_id))


@router.get(
    "/{job_id}/events",
    response_model=Page[EventRead],
    responses=errors(),
    summary="A job's events, oldest first",
)
def list_events(
    job_id: str, session: SessionDep, caller: CallerDep, after: After = None, limit: Limit = 100
) -> Page[EventRead]:
    if JobRepo(session).get(caller.project_id, job_id) is None:
        raise NotFound(f"no job {job_id!r}")
    try:
        events, has_more = EventRepo(session).page(job_id, after, limit)
    except UnknownCursor:
        raise unknown_cursor(after or "") from None
    return Page[EventRead](data=[event_read(e) for e in events], has_more=has_more)


@router.get(
    "/{job_id}/examples",
    response_model=ExamplesRead,
    responses=errors(),
    summary="Per training example: loss at each mask refresh, times chosen as most regressing, final loss",
)
def job_examples(job_id: str, session: SessionDep, caller: CallerDep) -> ExamplesRead:
    job = JobRepo(session).get(caller.project_id, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return ExamplesRead.model_validate({"job_id": job.id, "data": service.example_stats(session, job)})
