"""POST/GET /v1/jobs, cancel, events, examples: validation, idempotency, transitions."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from api_support import count_rows, ner_example, ner_job
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from store.models import Job
from store.queue import QUEUE_NAME
from store.repositories import EventRepo


def _locs(resp: httpx.Response) -> list[str]:
    body = resp.json()
    assert set(body) == {"error"}
    return [d["loc"] for d in body["error"]["details"]]


def test_create_returns_resolved_job_and_enqueues_after_commit(
    client: TestClient, auth: dict[str, str], enqueued: list[str], settings: Any
) -> None:
    r = client.post("/v1/jobs", json=ner_job(), headers=auth)
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["id"].startswith("job_") and job["status"] == "queued"
    assert job["base_model"] == "tiny-t5" and job["seed"] == 7 and job["metadata"] == {"team": "search"}
    hp = job["hyperparameters"]
    assert "auto" not in json.dumps(hp) and hp["batch_size"] == 4 and hp["seed"] == 7
    assert job["progress"] == {
        "step": 0,
        "total_steps": hp["total_steps"],
        "fraction": 0.0,
        "eta_seconds": None,
    }
    assert job["progress"]["total_steps"] > 0
    assert job["metrics"] == {"train_loss": None, "validation": None}
    assert job["validation_source"] == "none" and job["model_id"] is None and job["error"] is None
    assert enqueued == [job["id"]]
    # The message really reached the broker (Redis db 15), on the training queue.
    broker = redis.Redis.from_url(settings.broker_url)
    messages = broker.lrange(QUEUE_NAME, 0, -1)
    mine = [m for m in messages if job["id"].encode() in m]
    assert len(mine) == 1
    broker.lrem(QUEUE_NAME, 0, mine[0])
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json() == job


def test_validation_held_out_when_enough_examples(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post("/v1/jobs", json=ner_job(n=30), headers=auth)
    assert r.status_code == 201
    assert r.json()["validation_source"] == "held_out"
    r2 = client.post(
        "/v1/jobs", json=ner_job(n=30, validation_data={"examples": [ner_example(1)]}), headers=auth
    )
    assert r2.json()["validation_source"] == "given"


def test_enqueue_failure_leaves_job_queued(app: FastAPI, auth: dict[str, str]) -> None:
    def broken(job_id: str) -> None:
        raise ConnectionError("broker down")

    app.state.enqueue = broken
    with TestClient(app) as c:
        r = c.post("/v1/jobs", json=ner_job(), headers=auth)
        assert r.status_code == 201
        assert c.get(f"/v1/jobs/{r.json()['id']}", headers=auth).json()["status"] == "queued"


def _bad_bodies() -> Iterator[tuple[str, dict[str, Any], set[str]]]:
    body = ner_job()
    ex = body["training_data"]["examples"]
    ex[0]["entities"][0]["end"] = 500  # out of range
    ex[1]["entities"][0]["start"], ex[1]["entities"][0]["end"] = 5, 2  # inverted
    ex[2]["entities"][1]["label"] = "organisation"  # not in the task
    ex[3]["entities"].append({"start": 1, "end": 4, "label": "person"})  # overlaps entity 0
    yield (
        "spans",
        body,
        {
            "/training_data/examples/0/entities/0/end",
            "/training_data/examples/1/entities/0",
            "/training_data/examples/2/entities/1/label",
            "/training_data/examples/3/entities/2",
        },
    )
    yield (
        "unknown base and method, bad hyperparameter",
        ner_job(
            base_model="gpt-17",
            method={"type": "lora"},
            hyperparameters={"epochs": -3, "bias_correction": "sometimes"},
        ),
        {"/base_model", "/method/type", "/hyperparameters/epochs", "/hyperparameters/bias_correction"},
    )
    yield ("empty dataset", ner_job(n=0), {"/training_data/examples"})
    yield (
        "wrong types",
        {"task": "ner", "base_model": 5, "training_data": {"examples": "x"}, "seed": "seven"},
        {"/task", "/base_model", "/training_data/examples", "/seed"},
    )
    yield ("bad task spec", ner_job(task={"type": "ner", "labels": []}), {"/task/labels"})
    yield ("unknown dataset", ner_job(training_data={"dataset_id": "ds_nope"}), {"/training_data/dataset_id"})


@pytest.mark.parametrize("case", list(_bad_bodies()), ids=lambda c: c[0])
def test_bad_job_bodies_list_every_problem_and_leave_no_rows(
    case: tuple[str, dict[str, Any], set[str]],
    client: TestClient,
    auth: dict[str, str],
    session_factory: sessionmaker[Session],
    enqueued: list[str],
) -> None:
    _, body, expected = case
    before = count_rows(session_factory)
    r = client.post("/v1/jobs", json=body, headers=auth)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "validation_error"
    locs = set(_locs(r))
    for want in expected:
        assert any(loc == want or loc.startswith(want + "/") for loc in locs), (want, locs)
    assert count_rows(session_factory) == before and enqueued == []


def test_malformed_json_is_422_envelope(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post(
        "/v1/jobs", content=b'{"task": {"type": "ner",', headers={**auth, "Content-Type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"]["message"] == "the request body is not valid JSON"


def test_oversize_body_is_413_by_header_and_by_stream(
    client: TestClient, auth: dict[str, str], session_factory: sessionmaker[Session], settings: Any
) -> None:
    before = count_rows(session_factory)
    big = ner_job(metadata={"pad": "x" * (settings.max_body_bytes + 10)})
    r = client.post("/v1/jobs", json=big, headers=auth)
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer
        data = json.dumps(big).encode()
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    r = client.post("/v1/jobs", content=chunks(), headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
    assert count_rows(session_factory) == before


def test_idempotency_same_body_same_job_different_body_409(client: TestClient, auth: dict[str, str]) -> None:
    headers = {**auth, "Idempotency-Key": "abc-1"}
    first = client.post("/v1/jobs", json=ner_job(), headers=headers)
    again = client.post("/v1/jobs", json=ner_job(), headers=headers)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    other = client.post("/v1/jobs", json=ner_job(seed=8), headers=headers)
    assert other.status_code == 409 and other.json()["error"]["type"] == "conflict"


@pytest.fixture
def live_server(app: FastAPI) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_twenty_concurrent_creates_with_one_key_make_one_job(
    live_server: str, auth: dict[str, str], session_factory: sessionmaker[Session], enqueued: list[str]
) -> None:
    body = ner_job()
    headers = {**auth, "Idempotency-Key": "race-1"}
    barrier = threading.Barrier(20)
    results: list[tuple[int, str]] = []

    def post() -> None:
        with httpx.Client(base_url=live_server, timeout=60) as http:
            barrier.wait()
            r = http.post("/v1/jobs", json=body, headers=headers)
            results.append((r.status_code, r.json().get("id", r.text)))

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 20
    assert {code for code, _ in results} <= {200, 201}
    assert sorted(code for code, _ in results).count(201) == 1
    assert len({job_id for _, job_id in results}) == 1
    assert len(enqueued) == 1


def test_pagination_newest_first(client: TestClient, auth: dict[str, str]) -> None:
    ids = [client.post("/v1/jobs", json=ner_job(), headers=auth).json()["id"] for _ in range(5)]
    seen: list[str] = []
    after = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", params=params, headers=auth).json()
        seen += [j["id"] for j in page["data"]]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert seen == list(reversed(ids))
    assert client.get("/v1/jobs", params={"limit": 0}, headers=auth).status_code == 422
    assert client.get("/v1/jobs", params={"limit": 101}, headers=auth).status_code == 422
    r = client.get("/v1/jobs", params={"after": "job_unknown"}, headers=auth)
    assert r.status_code == 422 and _locs(r) == ["/after"]
    queued = client.get("/v1/jobs", params={"status": "queued"}, headers=auth).json()["data"]
    assert len(queued) == 5


def _set_status(factory: sessionmaker[Session], job_id: str, status: str) -> None:
    with factory() as session:
        session.execute(update(Job).where(Job.id == job_id).values(status=status))
        session.commit()


def test_cancel_transitions(
    client: TestClient, auth: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    queued = client.post("/v1/jobs", json=ner_job(), headers=auth).json()["id"]
    r = client.post(f"/v1/jobs/{queued}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    assert client.post(f"/v1/jobs/{queued}/cancel", headers=auth).status_code == 409

    running = client.post("/v1/jobs", json=ner_job(), headers=auth).json()["id"]
    _set_status(session_factory, running, "running")
    r = client.post(f"/v1/jobs/{running}/cancel", headers=auth)
    assert r.json()["status"] == "cancelling"
    with session_factory() as session:
        job = session.get(Job, running)
        assert job is not None and job.cancel_requested
    assert client.post(f"/v1/jobs/{running}/cancel", headers=auth).json()["status"] == "cancelling"
    for terminal in ("succeeded", "failed"):
        _set_status(session_factory, running, terminal)
        r = client.post(f"/v1/jobs/{running}/cancel", headers=auth)
        assert r.status_code == 409 and r.json()["error"]["type"] == "conflict"
    assert client.post("/v1/jobs/job_missing/cancel", headers=auth).status_code == 404


def test_events_and_examples(
    client: TestClient, auth: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    job_id = client.post("/v1/jobs", json=ner_job(n=4), headers=auth).json()["id"]
    with session_factory() as session:
        events = EventRepo(session)
        events.add(job_id, "metrics", {"step": 1, "loss": 2.5, "lr": 0.01})
        events.add(
            job_id,
            "mask_refresh",
            {
                "step": 0,
                "selected": 10,
                "overlap": None,
                "example_ids": [1, 3],
                "example_losses": {"1": 2.0, "3": 1.5},
            },
        )
        events.add(
            job_id,
            "mask_refresh",
            {
                "step": 100,
                "selected": 10,
                "overlap": 0.5,
                "example_ids": [1],
                "example_losses": {"1": 0.5, "2": 0.1},
            },
        )
        events.add(job_id, "examples", {"final_losses": {"0": 0.01, "1": 0.2, "2": 0.03, "3": 0.04}})
        session.commit()
    page = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 2}, headers=auth).json()
    assert [e["type"] for e in page["data"]] == ["status", "metrics"] and page["has_more"]
    assert page["data"][0]["data"] == {"status": "queued"}
    rest = client.get(
        f"/v1/jobs/{job_id}/events", params={"after": page["data"][-1]["id"]}, headers=auth
    ).json()
    assert [e["type"] for e in rest["data"]] == ["mask_refresh", "mask_refresh", "examples"]
    assert not rest["has_more"]
    stats = client.get(f"/v1/jobs/{job_id}/examples", headers=auth).json()["data"]
    assert len(stats) == 4
    assert stats[1] == {
        "index": 1,
        "refresh_losses": [{"step": 0, "loss": 2.0}, {"step": 100, "loss": 0.5}],
        "times_chosen": 2,
        "final_loss": 0.2,
    }
    assert (
        stats[0]["times_chosen"] == 0 and stats[0]["refresh_losses"] == [] and stats[0]["final_loss"] == 0.01
    )
