"""The FastAPI application: ``create_app(settings)``; ``app`` for ``uvicorn api.app:app``.

Everything a request needs hangs off ``app.state``: settings, engine, session factory, the
database admission slots (api/deps.py), the API-key cache (api/auth.py), artifact store,
the enqueue function (injectable, for tests), the serving cache, the rate limiter and the
metrics registry.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine

from api.auth import KeyCache
from api.deps import DbSlots
from api.errors import ErrorEnvelope, install_error_handlers
from api.middleware import BodySizeLimit, Metrics, RequestMetrics
from api.ratelimit import TokenBuckets
from api.routes import datasets, jobs, models, ops
from store.artifacts import ArtifactStore, artifact_store_from_settings
from store.db import engine_from_settings, make_session_factory, pooled_connections
from store.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Few-shot fine-tuning (FISH-DIP) as a service.

Every 4xx/5xx response body is the error envelope
`{"error": {"type", "message", "details": [{"loc", "message"}]}}`.
Limits: request body size (413), examples per job, text length, labels per task (422), and a per-key
request rate (429 with Retry-After; enforced per API process, in memory).

Authentication: `Authorization: Bearer <key>`. Each API process caches a key it has seen for
`FISHDIP_AUTH_CACHE_SECONDS` (default 5 s), so a revoked key is refused within that many
seconds of `fishdip keys revoke`; a newly created key works at once.
"""


def _default_enqueue(settings: Settings) -> Callable[[str], None]:
    from store.queue import enqueue_training

    return lambda job_id: enqueue_training(job_id, settings)


def _broker_probes(settings: Settings) -> tuple[Callable[[], bool], Callable[[], int | None]]:
    from store.queue import broker_reachable, queue_depth

    return (lambda: broker_reachable(settings)), (lambda: queue_depth(settings))


def _make_serving(settings: Settings, artifacts: ArtifactStore) -> Any:
    try:
        from api.serving import ServingCache
    except ImportError:
        log.warning("api.serving is not available: extraction answers 503")
        return None
    return ServingCache(settings, artifacts)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    if getattr(app.state, "serving", None) is None:
        app.state.serving = _make_serving(app.state.settings, app.state.artifacts)
    # Everything imported so far (torch, transformers, SQLAlchemy: millions of objects) lives
    # for the whole process; moving it out of the collector's generations keeps full garbage
    # collections from scanning it in the middle of requests.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        serving = app.state.serving
        if serving is not None:
            await serving.close()
        app.state.serving = None
        if app.state.owns_engine:
            app.state.engine.dispose()


def create_app(
    settings: Settings | None = None,
    *,
    engine: Engine | None = None,
    enqueue: Callable[[str], None] | None = None,
    artifacts: ArtifactStore | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="fishdip",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=_lifespan,
        responses={500: {"model": ErrorEnvelope, "description": "unexpected server error (internal_error)"}},
    )
    app.state.settings = settings
    app.state.owns_engine = engine is None
    app.state.engine = engine or engine_from_settings(settings)
    app.state.session_factory = make_session_factory(app.state.engine)
    app.state.db_slots = DbSlots(pooled_connections(app.state.engine))
    app.state.artifacts = artifacts or artifact_store_from_settings(settings)
    app.state.enqueue = enqueue or _default_enqueue(settings)
    app.state.broker_ok, app.state.queue_depth = _broker_probes(settings)
    app.state.serving = None
    app.state.rate_limiter = TokenBuckets(settings.rate_limit_per_minute)
    app.state.key_cache = KeyCache(settings.auth_cache_seconds)
    app.state.metrics = Metrics()

    install_error_handlers(app)
    for router in (jobs.router, datasets.router, models.router, ops.router):
        app.include_router(router)
    # Outermost first: metrics see every response, including 413s from the size limit.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn api.app:app`` builds the app on first access, not on import, so importing
    # this module (tests, the CLI) never reads the environment or opens a database.
    if name == "app":
        return create_app()
    raise AttributeError(name)
