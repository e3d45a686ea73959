"""Engine and session factory built from settings.

SQLite (embedded mode) gets WAL, foreign keys and a busy timeout on every connection so
that the API and a worker process can share one file; Postgres goes through psycopg 3.

Stale connections (a Postgres restart, an idle connection dropped by the network): a pooled
connection that sat idle for at least ``ping_idle_seconds`` is pinged when checked out, and
a dead one is replaced before the caller sees it (the pool then also discards every older
connection). A connection reused sooner is not pinged: under load that saves a round trip
per request, and a connection used within the last second is almost always alive. What a
restart can still fail is what it fails anyway: the transactions in flight at that moment,
plus the few checkouts of just-used connections that race the first detected disconnect.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from store.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
DEFAULT_PING_IDLE_SECONDS = 1.0
_CHECKED_IN_AT = "fishdip.checked_in_at"


def normalise_url(url: str) -> str:
    """Route plain ``postgresql://`` URLs to psycopg 3 (SQLAlchemy defaults to psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL makes NORMAL durable against application crashes, and much faster than FULL.
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def _ping_idle_checkouts(engine: Engine, idle_seconds: float) -> None:
    """Ping a connection on checkout only when it has been idle for ``idle_seconds``."""

    def checked_in(_dbapi_conn: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    def checked_out(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        last = record.info.get(_CHECKED_IN_AT)
        if last is None or time.monotonic() - last < idle_seconds:
            return  # just connected, or in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_conn)
        except Exception as exc:
            # DisconnectionError makes the pool drop this connection and retry with a new one.
            raise DisconnectionError("pooled connection is dead") from exc
        if not alive:
            raise DisconnectionError("pooled connection is dead")

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)


def make_engine(url: str, ping_idle_seconds: float = DEFAULT_PING_IDLE_SECONDS, **kwargs: Any) -> Engine:
    """``ping_idle_seconds`` applies to server databases unless ``pool_pre_ping`` is given
    (which pings every checkout)."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            from pathlib import Path

            Path(database).parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        _ping_idle_checkouts(engine, ping_idle_seconds)
    return engine


def engine_from_settings(settings: Settings) -> Engine:
    url = normalise_url(settings.database_url)
    if _in_memory_sqlite(url):
        # One connection per thread (SingletonThreadPool): there is no pool to size.
        return make_engine(url)
    return make_engine(
        url,
        ping_idle_seconds=settings.db_ping_idle_seconds,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )


def _in_memory_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and (parsed.database or ":memory:") == ":memory:"


def pooled_connections(engine: Engine) -> int | None:
    """How many connections ``engine`` keeps open for reuse; None when it has no such
    pool (a per-thread or null pool), so callers cannot be made to wait for one."""
    pool = engine.pool
    return pool.size() if isinstance(pool, QueuePool) else None


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: routes serialise rows after the commit in the dependency.
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short transaction: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
