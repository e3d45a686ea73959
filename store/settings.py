"""One settings object for the API and the worker, read from ``FISHDIP_*`` variables.

Defaults are the embedded mode: SQLite, a SQLite-backed broker and a local artifact
directory under ``./var``, so that one command starts a working service on a laptop.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FISHDIP_", extra="ignore")

    data_dir: Path = Path("var")
    database_url: str = "sqlite:///var/fishdip.db"
    # Embedded default: kombu's SQLAlchemy transport on a SQLite file (no broker server).
    broker_url: str = "sqla+sqlite:///var/broker.db"
    # file:///abs/path, a relative path, or s3://bucket/prefix (then the s3_* fields apply).
    artifact_url: str = "var/artifacts"
    # Connections per process. The API admits at most db_pool_size requests into a database
    # session at once (api/deps.py); the rest wait on the event loop. The overflow is kept
    # for what is not admitted (readiness and metrics probes), so a probe never queues
    # behind requests, and requests never use overflow connections, which SQLAlchemy
    # closes on return and Postgres must fork a backend to reopen.
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    # A pooled connection idle this long is pinged before reuse (store/db.py); 0 pings always.
    db_ping_idle_seconds: float = Field(default=1.0, ge=0)
    # API-key lookups are cached per API process for this long, so a revoked key keeps
    # working for up to this many seconds; 0 looks every request up in the database.
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None

    # Request limits (documented in API.md / the OpenAPI schema).
    max_body_bytes: int = 8 * 1024 * 1024
    max_examples: int = 5000
    max_text_chars: int = 20_000
    max_labels: int = 100
    max_extract_texts: int = 64
    rate_limit_per_minute: int = 600

    # Worker liveness: a running job whose heartbeat is older than the timeout is re-queued
    # by the reaper, or failed once it has been attempted max_attempts times.
    heartbeat_seconds: float = 5.0
    heartbeat_timeout_seconds: float = 60.0
    reaper_interval_seconds: float = 15.0
    max_attempts: int = 3

    # Base models this deployment offers; empty means every registered base.
    base_models: list[str] = Field(default_factory=list)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # The worker's malloc: jemalloc keeps a training process's resident set 1-2 GB lower than
    # glibc's on gemma-3-270m (docs/BENCHMARKS.md). auto: jemalloc where libjemalloc2 is
    # installed; jemalloc: required; system: the C library's.
    allocator: Literal["auto", "jemalloc", "system"] = "auto"
    model_cache_size: int = 8  # fine-tuned deltas kept resident by the serving cache
    cache_dir: Path = Path.home() / ".cache" / "fishdip"

    @field_validator("heartbeat_timeout_seconds")
    @classmethod
    def _timeout_exceeds_heartbeat(cls, v: float, info: object) -> float:
        data = getattr(info, "data", {})
        hb = data.get("heartbeat_seconds", 5.0)
        if v <= 2 * hb:
            raise ValueError("heartbeat_timeout_seconds must exceed twice heartbeat_seconds")
        return v


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
