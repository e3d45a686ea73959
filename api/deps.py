"""Request dependencies: the per-request transaction, the caller's project, rate limits.

One session per request: committed before the response is sent when the route returns
normally, rolled back on any error, so a rejected request leaves no row behind. Work that
must only happen once the rows are durable (enqueueing a job) is registered with
:func:`after_commit`.

Admission: a request takes one of :class:`DbSlots` (as many as the connections the engine's
pool keeps open) on the event loop before it opens its session, and gives it back once the
session is closed. The session's work runs in the thread pool; if more requests held a
session than there are connections, thread-pool threads would block waiting for a
connection that only a request queued for a thread could give back, and every request
would hang. With the slots, a request that holds a session always gets a connection without
waiting, so no thread ever blocks on the pool, and surplus requests wait on the loop,
holding no thread. The pool's overflow stays free for work that is not admitted (readiness
and metrics probes).

Cost per request: each thread-pool hop is a GIL hand-off and a wake-up of the loop, so a
request makes as few as it can. The dependencies are async and do no I/O on the loop:
opening a session does not connect, the caller is usually found in :class:`KeyCache`
(else looked up in one hop), and a sync route's endpoint runs and commits in one hop
(:class:`TransactionalRoute`). A cached caller and a sync route thus cost one hop in all;
the transaction is only ended in a separate hop when the route did not commit it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy.orm import Session

from api.auth import KeyCache, KnownKey
from api.errors import RateLimited, Unauthenticated
from api.ratelimit import TokenBuckets
from store.keys import hash_secret
from store.repositories import ApiKeyRepo
from store.settings import Settings

log = logging.getLogger(__name__)

AFTER_COMMIT = "fishdip.after_commit"
TRANSACTION = "fishdip.transaction"


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


class RequestTransaction:
    """A request's session and admission slot, and the ways its transaction ends.

    ``commit_in_thread`` is for the thread a sync endpoint runs in; ``end`` and ``abort`` are
    for the loop and hop to a thread only when there is I/O left to do. Whichever ends the
    transaction first wins; the slot is given back exactly once, after the session closed.
    """

    def __init__(self, session: Session, slot: asyncio.Semaphore | None) -> None:
        self.session = session
        self._slot = slot
        self._committed = False
        self._released = False

    def commit_in_thread(self) -> None:
        """Commit, close and run the after-commit hooks; blocking. A failed commit is rolled
        back and the session closed here, so its connection goes back to the pool."""
        try:
            self.session.commit()
        except BaseException:
            self._rollback()
            raise
        self.session.close()
        self._committed = True
        for hook in self.session.info.get(AFTER_COMMIT, []):
            try:
                hook()
            except Exception:
                log.exception("after-commit hook failed")

    async def end(self) -> None:
        """Commit (unless already done), close, give the slot back. Idempotent."""
        try:
            if self._committed or self._released:
                return
            if self.session.in_transaction() or self.session.info.get(AFTER_COMMIT):
                await anyio.to_thread.run_sync(self.commit_in_thread)
            else:
                self.session.close()  # never connected: nothing to commit, no I/O
                self._committed = True
        finally:
            self._release()

    async def abort(self) -> None:
        try:
            if not self._committed and not self._released and self.session.in_transaction():
                await anyio.to_thread.run_sync(self._rollback)
            else:
                self.session.close()
        finally:
            self._release()

    def _rollback(self) -> None:
        try:
            self.session.rollback()
        finally:
            self.session.close()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            if self._slot is not None:
                self._slot.release()


async def _transaction(request: Request) -> AsyncIterator[RequestTransaction]:
    # Async on purpose: waiting for a slot must not occupy a thread-pool thread.
    slots: DbSlots = request.app.state.db_slots
    sem = slots.semaphore()
    if sem is not None:
        await sem.acquire()
    txn = RequestTransaction(request.app.state.session_factory(), sem)
    txn.session.info[TRANSACTION] = txn
    try:
        yield txn
    except BaseException:
        with anyio.CancelScope(shield=True):
            await txn.abort()
        raise
    # Shielded: a cancelled request must still end its transaction and give its slot back.
    with anyio.CancelScope(shield=True):
        await txn.end()


# scope="function": the transaction ends before the response is sent, so a commit failure
# becomes an error response instead of a 2xx for rows that were never stored.
TransactionDep = Annotated[RequestTransaction, Depends(_transaction, scope="function")]


async def _session(txn: TransactionDep) -> Session:
    return txn.session


SessionDep = Annotated[Session, Depends(_session, scope="function")]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def end_transaction(session: Session) -> None:
    """Commit and close the request's session and give its admission slot back now, for a
    route that goes on to wait for something else (extraction). The route must not use the
    session afterwards: it would take a connection without holding a slot."""
    txn: RequestTransaction = session.info[TRANSACTION]
    await txn.end()


def _call_and_commit(endpoint: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    result = endpoint(**kwargs)
    for value in kwargs.values():
        if isinstance(value, Session) and TRANSACTION in value.info:
            value.info[TRANSACTION].commit_in_thread()
            break
    return result


def _in_one_hop(endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Make a sync endpoint async: it runs, and commits the request's session, in one
    thread-pool hop. Left sync, FastAPI would spend a hop on it, another on validating its
    return value, and the session's teardown a third on the commit. FastAPI reads the
    wrapped signature (``functools.wraps`` sets ``__wrapped__``), so parameters are unchanged."""

    @functools.wraps(endpoint)
    async def run(**kwargs: Any) -> Any:
        return await anyio.to_thread.run_sync(_call_and_commit, endpoint, kwargs)

    return run


class TransactionalRoute(APIRoute):
    """Route class for the API routers: a sync endpoint runs and commits in one thread-pool hop."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if not inspect.iscoroutinefunction(endpoint):
            endpoint = _in_one_hop(endpoint)
        super().__init__(path, endpoint, **kwargs)


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


def _lookup_key(session: Session, key_hash: str) -> KnownKey | None:
    key = ApiKeyRepo(session).active_by_hash(key_hash)
    return None if key is None else KnownKey(key_id=key.id, project_id=key.project_id)


async def current_caller(request: Request, txn: TransactionDep) -> Caller:
    key_hash = hash_secret(_bearer(request))
    cache: KeyCache = request.app.state.key_cache
    key = cache.get(key_hash)
    if key is None:
        # In the request's own session, so the lookup takes no second connection.
        key = await anyio.to_thread.run_sync(_lookup_key, txn.session, key_hash)
        if key is None:
            raise Unauthenticated("unknown or revoked API key")
        cache.put(key_hash, key)
    buckets: TokenBuckets = request.app.state.rate_limiter
    wait = buckets.take(key.key_id)
    if wait is not None:
        raise RateLimited(
            "rate limit exceeded for this API key",
            headers={"Retry-After": TokenBuckets.retry_after_header(wait)},
        )
    return Caller(project_id=key.project_id, key_id=key.key_id)


CallerDep = Annotated[Caller, Depends(current_caller, scope="function")]
