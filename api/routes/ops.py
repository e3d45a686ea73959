"""Operations: /healthz, /readyz, /metrics, and the base-model catalogue."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

import core
from api.deps import CallerDep
from api.errors import errors
from api.middleware import Metrics
from api.schemas import BaseModelInfo, BaseModelList, Health
from store.repositories import ALL_STATUSES, JobRepo

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])

PROBE_TIMEOUT_S = 3.0


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


def _db_ok(request: Request) -> bool:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        log.warning("database not reachable", exc_info=True)
        return False


async def _probe(fn: Any, *args: Any) -> bool:
    try:
        return bool(await asyncio.wait_for(run_in_threadpool(fn, *args), PROBE_TIMEOUT_S))
    except Exception:  # noqa: BLE001 - a hung probe counts as down
        return False


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "a dependency is down"}},
    summary="Database and broker reachable",
)
async def readyz(request: Request) -> JSONResponse:
    checks = {
        "database": await _probe(_db_ok, request),
        "broker": await _probe(request.app.state.broker_ok),
    }
    ok = all(checks.values())
    body = Health(
        status="ok" if ok else "unavailable", checks={k: "ok" if v else "down" for k, v in checks.items()}
    )
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


def _refresh_gauges(request: Request) -> None:
    metrics: Metrics = request.app.state.metrics
    try:
        with request.app.state.session_factory() as session:
            counts = JobRepo(session).count_by_status()
        for status in ALL_STATUSES:
            metrics.jobs.labels(status).set(counts.get(status, 0))
    except Exception:
        log.warning("job counts unavailable", exc_info=True)
    depth = request.app.state.queue_depth()
    if depth is not None:
        metrics.queue_depth.set(depth)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}},
    summary="Prometheus metrics: requests, latencies, jobs by status, queue depth",
)
async def metrics(request: Request) -> Response:
    await _probe(_refresh_gauges, request)
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/base-models",
    response_model=BaseModelList,
    responses=errors(),
    tags=["models"],
    summary="Base models this deployment can train",
)
def base_models(request: Request, caller: CallerDep) -> BaseModelList:
    offered = set(request.app.state.settings.base_models)
    bases = [b for b in core.list_bases() if not offered or b.name in offered]
    return BaseModelList(
        data=[
            BaseModelInfo(name=b.name, family=b.family, parameters=b.parameters, loaded=b.loaded)
            for b in bases
        ]
    )
