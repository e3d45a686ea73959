"""Request dependencies: the per-request transaction, the caller's project, rate limits.

One session per request: committed when the route returns normally, rolled back on any
error, so a rejected request leaves no row behind. Work that must only happen once the
rows are durable (enqueueing a job) is registered with :func:`after_commit`.

Admission: a request takes one of :class:`DbSlots` (as many as the connections the engine's
pool keeps open) on the event loop before it opens its session, and gives it back once the
session is closed. The session itself is synchronous and runs in the thread pool across
several hops (open, caller lookup, route, commit); if more requests held a session than
there are connections, thread-pool threads would block waiting for a connection that only
a request queued for a thread could give back, and every request would hang. With the
slots, a request that holds a session always gets a connection without waiting, so no
thread ever blocks on the pool, and surplus requests wait on the loop, holding no thread.
The pool's overflow stays free for work that is not admitted (readiness and metrics probes).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.errors import RateLimited, Unauthenticated
from api.ratelimit import TokenBuckets
from store.keys import hash_secret
from store.repositories import ApiKeyRepo
from store.settings import Settings

log = logging.getLogger(__name__)

AFTER_COMMIT = "fishdip.after_commit"


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


class DbSlots:
    """At most ``capacity`` requests inside a database session at once (None: no limit).

    asyncio semaphores belong to one event loop; an app normally lives on one, but a test
    may drive the same app from several loops in turn, so each loop gets its own.
    """

    def __init__(self, capacity: int | None) -> None:
        self.capacity = capacity
        self._by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def semaphore(self) -> asyncio.Semaphore | None:
        if self.capacity is None:
            return None
        loop = asyncio.get_running_loop()
        sem = self._by_loop.get(loop)
        if sem is None:
            sem = self._by_loop[loop] = asyncio.Semaphore(self.capacity)
        return sem


async def _db_slot(request: Request) -> AsyncIterator[None]:
    # Async on purpose: waiting for a slot must not occupy a thread-pool thread.
    slots: DbSlots = request.app.state.db_slots
    sem = slots.semaphore()
    if sem is None:
        yield
        return
    async with sem:
        # Released only after _session (which depends on this) has closed its session.
        yield


DbSlotDep = Annotated[None, Depends(_db_slot, scope="function")]


def _session(request: Request, _slot: DbSlotDep) -> Iterator[Session]:
    session: Session = request.app.state.session_factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    # Only reached after a successful commit.
    for hook in session.info.get(AFTER_COMMIT, []):
        try:
            hook()
        except Exception:
            log.exception("after-commit hook failed")


# scope="function": the transaction ends before the response is sent, so a commit failure
# becomes an error response instead of a 2xx for rows that were never stored.
SessionDep = Annotated[Session, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def after_commit(session: Session, hook: Callable[[], Any]) -> None:
    session.info.setdefault(AFTER_COMMIT, []).append(hook)


@dataclass(frozen=True)
class Caller:
    project_id: str
    key_id: str


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
    return token.strip()


def current_caller(request: Request, session: SessionDep) -> Caller:
    key = ApiKeyRepo(session).active_by_hash(hash_secret(_bearer(request)))
    if key is None:
        raise Unauthenticated("unknown or revoked API key")
    buckets: TokenBuckets = request.app.state.rate_limiter
    wait = buckets.take(key.id)
    if wait is not None:
        raise RateLimited(
            "rate limit exceeded for this API key",
            headers={"Retry-After": TokenBuckets.retry_after_header(wait)},
        )
    return Caller(project_id=key.project_id, key_id=key.id)


CallerDep = Annotated[Caller, Depends(current_caller, scope="function")]
