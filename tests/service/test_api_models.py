"""/v1/models: list, read, artifact download and manifest, delete, extract without serving."""

from __future__ import annotations

import hashlib
from pathlib import Path

from api_support import MANIFEST, add_model, ner_job
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from store.artifacts import LocalArtifactStore


def test_models_read_download_delete(
    client: TestClient,
    auth: dict[str, str],
    session_factory: sessionmaker[Session],
    artifacts: LocalArtifactStore,
    tmp_path: Path,
) -> None:
    jobs = [client.post("/v1/jobs", json=ner_job(), headers=auth).json()["id"] for _ in range(3)]
    models = [add_model(session_factory, j, artifacts, tmp_path) for j in jobs]
    page = client.get("/v1/models", params={"limit": 2}, headers=auth).json()
    assert [m["id"] for m in page["data"]] == [models[2].id, models[1].id] and page["has_more"]
    got = client.get(f"/v1/models/{models[0].id}", headers=auth).json()
    assert got["job_id"] == jobs[0] and got["base_model"] == "tiny-t5"
    assert got["artifact"] == {
        "bytes": models[0].artifact_bytes,
        "parameters_changed": 5,
        "sha256": models[0].sha256,
    }

    r = client.get(f"/v1/models/{models[0].id}/artifact", headers=auth)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert hashlib.sha256(r.content).hexdigest() == models[0].sha256
    assert int(r.headers["content-length"]) == models[0].artifact_bytes
    manifest = client.get(f"/v1/models/{models[0].id}/artifact", params={"manifest": 1}, headers=auth)
    assert manifest.json() == MANIFEST

    assert client.delete(f"/v1/models/{models[0].id}", headers=auth).status_code == 204
    assert client.get(f"/v1/models/{models[0].id}", headers=auth).status_code == 404
    assert not artifacts.exists(models[0].artifact_key)
    assert client.get(f"/v1/jobs/{jobs[0]}", headers=auth).json()["model_id"] is None


def test_extract_validates_and_answers_503_without_serving(
    app: FastAPI,
    auth: dict[str, str],
    session_factory: sessionmaker[Session],
    artifacts: LocalArtifactStore,
    tmp_path: Path,
) -> None:
    with TestClient(app) as client:
        job_id = client.post("/v1/jobs", json=ner_job(), headers=auth).json()["id"]
        model = add_model(session_factory, job_id, artifacts, tmp_path)
        url = f"/v1/models/{model.id}/extract"
        assert client.post(url, json={}, headers=auth).status_code == 422
        assert client.post(url, json={"texts": []}, headers=auth).status_code == 422
        too_many = {"texts": ["a"] * (app.state.settings.max_extract_texts + 1)}
        assert client.post(url, json=too_many, headers=auth).status_code == 422
        long_text = {"texts": ["x" * (app.state.settings.max_text_chars + 1)]}
        r = client.post(url, json=long_text, headers=auth)
        assert r.status_code == 422
        assert [d["loc"] for d in r.json()["error"]["details"]] == ["/texts/0"]
        r = client.post(url, json={"inputs": ["ok", {"text": 7}]}, headers=auth)
        assert r.status_code == 422 and r.json()["error"]["details"][0]["loc"] == "/inputs/1/text"
        app.state.serving = None  # as when api.serving is not installed
        r = client.post(url, json={"texts": ["Barack Obama visited Paris."]}, headers=auth)
        assert r.status_code == 503 and r.json()["error"]["type"] == "service_unavailable"
        assert (
            client.post("/v1/models/model_nope/extract", json={"texts": ["x"]}, headers=auth).status_code
            == 404
        )
