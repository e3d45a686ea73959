"""Engine and session factory built from settings.

SQLite (embedded mode) gets WAL, foreign keys and a busy timeout on every connection so
that the API and a worker process can share one file; Postgres goes through psycopg 3.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import QueuePool

from store.settings import Settings

SQLITE_BUSY_TIMEOUT_MS = 30_000


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


def make_engine(url: str, **kwargs: Any) -> Engine:
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
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def engine_from_settings(settings: Settings) -> Engine:
    url = normalise_url(settings.database_url)
    if _in_memory_sqlite(url):
        # One connection per thread (SingletonThreadPool): there is no pool to size.
        return make_engine(url)
    return make_engine(url, pool_size=settings.db_pool_size, max_overflow=settings.db_max_overflow)


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
