"""Request dependencies: the per-request transaction, the caller's project, rate limits.

One session per request: committed when the route returns normally, rolled back on any
error, so a rejected request leaves no row behind. Work that must only happen once the
rows are durable (enqueueing a job) is registered with :func:`after_commit`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
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


def _session(request: Request) -> Iterator[Session]:
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
