"""Operations routes, the error envelope for framework errors, rate limits, OpenAPI."""

from __future__ import annotations

from typing import Any

from api_support import ner_job
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from api.app import create_app
from store.settings import Settings

ROUTES = {
    ("post", "/v1/datasets"),
    ("get", "/v1/datasets"),
    ("get", "/v1/datasets/{dataset_id}"),
    ("delete", "/v1/datasets/{dataset_id}"),
    ("post", "/v1/jobs"),
    ("get", "/v1/jobs"),
    ("get", "/v1/jobs/{job_id}"),
    ("post", "/v1/jobs/{job_id}/cancel"),
    ("get", "/v1/jobs/{job_id}/events"),
    ("get", "/v1/jobs/{job_id}/examples"),
    ("get", "/v1/models"),
    ("get", "/v1/models/{model_id}"),
    ("delete", "/v1/models/{model_id}"),
    ("get", "/v1/models/{model_id}/artifact"),
    ("post", "/v1/models/{model_id}/extract"),
    ("get", "/v1/base-models"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}


def test_openapi_lists_every_route_and_the_error_envelope(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    listed = {(m, p) for p, ops in schema["paths"].items() for m in ops}
    assert listed >= ROUTES
    assert {"ErrorEnvelope", "ErrorBody", "ErrorDetail", "JobCreate", "JobRead"} <= set(
        schema["components"]["schemas"]
    )
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    for method, path in ROUTES:
        if path.startswith("/v1/"):
            responses = schema["paths"][path][method]["responses"]
            for code in ("401", "404", "422", "429", "500"):
                ref = responses[code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorEnvelope"), (method, path, code)
    assert "409" in schema["paths"]["/v1/jobs"]["post"]["responses"]
    body = schema["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson", "multipart/form-data"} <= set(body)


def test_framework_errors_use_the_envelope(client: TestClient, auth: dict[str, str]) -> None:
    r = client.get("/v1/nothing-here", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found"
    r = client.put("/v1/jobs", headers=auth)
    assert r.status_code == 405 and r.json()["error"]["type"] == "method_not_allowed"
    r = client.get("/v1/jobs", params={"limit": "many"}, headers=auth)
    assert r.status_code == 422
    assert r.json()["error"]["details"] == [
        {
            "loc": "/limit",
            "message": "Input should be a valid integer, unable to parse string as an integer",
            "location": "query",
        }
    ]


def test_unhandled_error_is_500_envelope(app: FastAPI) -> None:
    def boom() -> None:
        raise RuntimeError("kaput")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/boom")
    assert r.status_code == 500
    assert r.json() == {
        "error": {"type": "internal_error", "message": "internal server error", "details": []}
    }


def test_rate_limit_429_with_retry_after(
    settings: Settings, engine: Engine, auth: dict[str, str], other_auth: dict[str, str]
) -> None:
    limited = settings.model_copy(update={"rate_limit_per_minute": 3})
    app = create_app(limited, engine=engine, enqueue=lambda _: None)
    with TestClient(app) as c:
        codes = [c.get("/v1/jobs", headers=auth).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = c.get("/v1/jobs", headers=auth)
        assert r.json()["error"]["type"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        assert c.get("/v1/jobs", headers=other_auth).status_code == 200  # buckets are per key


def test_health_ready_metrics(client: TestClient, auth: dict[str, str]) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    client.post("/v1/jobs", json=ner_job(), headers=auth)
    text = client.get("/metrics").text
    assert 'fishdip_http_requests_total{method="POST",route="/v1/jobs",status="201"}' in text
    assert "fishdip_http_request_duration_seconds_bucket" in text
    assert 'fishdip_jobs{status="queued"}' in text
    assert "fishdip_queue_depth" in text


def test_readyz_503_when_broker_down(settings: Settings, engine: Engine) -> None:
    down = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down, engine=engine, enqueue=lambda _: None)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"] == {"database": "ok", "broker": "down"}


def test_base_models(client: TestClient, auth: dict[str, str], settings: Settings, engine: Engine) -> None:
    names = {b["name"] for b in client.get("/v1/base-models", headers=auth).json()["data"]}
    assert {"tiny-t5", "tiny-causal"} <= names
    only: Any = settings.model_copy(update={"base_models": ["tiny-t5"]})
    with TestClient(create_app(only, engine=engine, enqueue=lambda _: None)) as c:
        data = c.get("/v1/base-models", headers=auth).json()["data"]
        assert [b["name"] for b in data] == ["tiny-t5"]
        assert set(data[0]) == {"name", "family", "parameters", "loaded"}
        r = c.post("/v1/jobs", json=ner_job(base_model="tiny-causal"), headers=auth)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == "/base_model"


def test_a_failed_request_rolls_back_what_it_flushed(
    app: FastAPI, session_factory: Any, auth: dict[str, str]
) -> None:
    from api_support import count_rows

    from api.deps import SessionDep
    from api.errors import ValidationFailed
    from store.models import Project, new_id

    def half_written(session: SessionDep) -> None:
        session.add(Project(id=new_id("proj"), name=new_id("half")))
        session.flush()  # the row exists inside the transaction...
        raise ValidationFailed("...but the request fails afterwards")

    app.add_api_route("/half", half_written, methods=["POST"])
    before = count_rows(session_factory)
    with TestClient(app) as c:
        assert c.post("/half").status_code == 422
    assert count_rows(session_factory) == before
