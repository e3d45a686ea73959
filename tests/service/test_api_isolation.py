"""Auth and tenancy: a key sees only its own project's resources (404 otherwise)."""

from __future__ import annotations

import time
from pathlib import Path

from api_support import add_model, ner_job
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from api.auth import KeyCache, KnownKey
from store.artifacts import LocalArtifactStore
from store.keys import create_key, hash_secret, revoke_key
from store.models import ApiKey, new_id
from store.settings import Settings


def test_other_project_gets_404_everywhere(
    client: TestClient,
    auth: dict[str, str],
    other_auth: dict[str, str],
    session_factory: sessionmaker[Session],
    artifacts: LocalArtifactStore,
    tmp_path: Path,
) -> None:
    job_id = client.post("/v1/jobs", json=ner_job(), headers=auth).json()["id"]
    ds = client.post(
        "/v1/datasets",
        json={"task_type": "ner", "examples": ner_job()["training_data"]["examples"]},
        headers=auth,
    )
    ds_id = ds.json()["id"]
    model_id = add_model(session_factory, job_id, artifacts, tmp_path).id
    routes = [
        ("GET", f"/v1/jobs/{job_id}"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/examples"),
        ("GET", f"/v1/datasets/{ds_id}"),
        ("DELETE", f"/v1/datasets/{ds_id}"),
        ("GET", f"/v1/models/{model_id}"),
        ("GET", f"/v1/models/{model_id}/artifact"),
        ("DELETE", f"/v1/models/{model_id}"),
    ]
    for method, path in routes:
        r = client.request(method, path, headers=other_auth)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["type"] == "not_found"
    r = client.post(f"/v1/models/{model_id}/extract", json={"texts": ["hi"]}, headers=other_auth)
    assert r.status_code == 404
    # Another project's ids are not cursors either, and its lists are empty.
    assert client.get("/v1/jobs", params={"after": job_id}, headers=other_auth).status_code == 422
    for path in ("/v1/jobs", "/v1/datasets", "/v1/models"):
        assert client.get(path, headers=other_auth).json() == {"data": [], "has_more": False}
    # A job naming another project's dataset does not see it.
    r = client.post("/v1/jobs", json=ner_job(training_data={"dataset_id": ds_id}), headers=other_auth)
    assert r.status_code == 422
    # And everything is still there for the owner.
    for method, path in routes[:-1]:
        if method == "GET":
            assert client.get(path, headers=auth).status_code == 200, path


def test_missing_invalid_and_revoked_keys_get_401(
    settings: Settings,
    engine: Engine,
    artifacts: LocalArtifactStore,
    session_factory: sessionmaker[Session],
    api_key: str,
) -> None:
    ttl = 0.5
    app = create_app(
        settings.model_copy(update={"auth_cache_seconds": ttl}), engine=engine, artifacts=artifacts
    )
    auth = {"Authorization": f"Bearer {api_key}"}
    with TestClient(app) as client:
        for headers in ({}, {"Authorization": "Bearer fdk_wrong"}, {"Authorization": "Basic abc"}):
            r = client.get("/v1/jobs", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert client.get("/v1/jobs", headers=auth).status_code == 200  # now cached
        with session_factory() as session:
            key = session.query(ApiKey).filter_by(key_hash=hash_secret(api_key)).one()
            assert key.key_hash != api_key  # stored hashed
            revoke_key(session, key.id)
            session.commit()
        # The documented bound: refused once the cache entry is older than the TTL.
        time.sleep(ttl + 0.1)
        r = client.get("/v1/jobs", headers=auth)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert client.get("/v1/jobs", headers=auth).status_code == 401  # refusals are not cached away


def test_unknown_key_is_not_cached_so_a_new_key_works_at_once(
    client: TestClient, session_factory: sessionmaker[Session], api_key: str
) -> None:
    with session_factory() as session:
        created = create_key(session, f"late-{new_id('p')}")
        session.rollback()  # not stored yet: the API must not know this secret
    late = {"Authorization": f"Bearer {created.secret}"}
    assert client.get("/v1/jobs", headers=late).status_code == 401
    with session_factory() as session:
        session.add(ApiKey(id=created.key_id, project_id=_project_of(session, api_key),
                           name="late", key_hash=hash_secret(created.secret)))  # fmt: skip
        session.commit()
    assert client.get("/v1/jobs", headers=late).status_code == 200


def _project_of(session: Session, secret: str) -> str:
    return session.query(ApiKey).filter_by(key_hash=hash_secret(secret)).one().project_id


def test_key_cache_expires_and_bounds_itself() -> None:
    now = [0.0]
    cache = KeyCache(5.0, clock=lambda: now[0])
    cache.put("h", KnownKey(key_id="k", project_id="p"))
    now[0] = 4.9
    assert cache.get("h") == KnownKey(key_id="k", project_id="p")
    now[0] = 5.0
    assert cache.get("h") is None
    off = KeyCache(0.0)
    off.put("h", KnownKey(key_id="k", project_id="p"))
    assert off.get("h") is None
