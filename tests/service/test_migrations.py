"""The migrations are the schema: no drift from the ORM models, on Postgres and SQLite."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect

from store.db import make_engine
from store.migrate import downgrade_base, upgrade_head
from store.models import Base

REPO = Path(__file__).resolve().parents[2]


def _drift(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, Base.metadata))


def test_no_drift_between_models_and_migrations_on_postgres(engine: Engine) -> None:
    assert _drift(engine) == []


def test_upgrade_head_on_sqlite_matches_models_and_downgrades(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_head(url)
    eng = make_engine(url)
    try:
        assert _drift(eng) == []
        with eng.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        downgrade_base(url)
        assert set(inspect(eng).get_table_names()) == {"alembic_version"}
        upgrade_head(url)
        assert set(Base.metadata.tables) <= set(inspect(eng).get_table_names())
    finally:
        eng.dispose()


def test_alembic_command_line_with_x_url(tmp_path: Path) -> None:
    """`alembic -x url=... upgrade head` from the repository root, as operators run it."""
    name = f"fishdip_cli_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # type: ignore[arg-type]
    try:
        url = f"postgresql://postgres@127.0.0.1:5432/{name}"
        alembic = Path(sys.executable).parent / "alembic"
        subprocess.run([str(alembic), "-x", f"url={url}", "upgrade", "head"], cwd=REPO, check=True)
        eng = make_engine(url)
        try:
            assert _drift(eng) == []
        finally:
            eng.dispose()
    finally:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]
