"""The ``fishdip`` admin command, and the whole API on an embedded SQLite database."""

from __future__ import annotations

import io
import re
from pathlib import Path

from api_support import ner_job
from fastapi.testclient import TestClient

from api.app import create_app
from api.cli import main
from store.settings import Settings


def _run(*argv: str) -> str:
    out = io.StringIO()
    assert main(list(argv), out=out) == 0
    return out.getvalue()


def test_keys_lifecycle_and_api_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    assert "latest revision" in _run("--database-url", url, "migrate")
    created = _run("--database-url", url, "keys", "create", "--project", "acme", "--name", "ci")
    secret = re.search(r"secret:\s+(\S+)", created)
    key_id = re.search(r"key id:\s+(\S+)", created)
    assert secret and key_id
    listing = _run("--database-url", url, "keys", "list")
    assert key_id.group(1) in listing and "acme" in listing and secret.group(1) not in listing
    # A second key for the same project reuses the project.
    _run("--database-url", url, "keys", "create", "--project", "acme")
    assert _run("--database-url", url, "keys", "list").count("acme") == 2

    settings = Settings(
        database_url=url,
        broker_url="redis://127.0.0.1:6379/15",
        artifact_url=str(tmp_path / "a"),
        auth_cache_seconds=0,  # no key cache: the revocation below must show at once
    )
    sent: list[str] = []
    auth = {"Authorization": f"Bearer {secret.group(1)}"}
    with TestClient(create_app(settings, enqueue=sent.append)) as client:
        r = client.post("/v1/jobs", json=ner_job(), headers={**auth, "Idempotency-Key": "k"})
        assert r.status_code == 201, r.text
        assert (
            client.post("/v1/jobs", json=ner_job(), headers={**auth, "Idempotency-Key": "k"}).status_code
            == 200
        )
        assert client.get("/v1/jobs", headers=auth).json()["data"][0]["id"] == r.json()["id"]
        assert client.post(f"/v1/jobs/{r.json()['id']}/cancel", headers=auth).json()["status"] == "cancelled"
        assert sent == [r.json()["id"]]
        assert "revoked" in _run("--database-url", url, "keys", "revoke", key_id.group(1))
        assert client.get("/v1/jobs", headers=auth).status_code == 401
    assert main(["--database-url", url, "keys", "revoke", "key_missing"], out=io.StringIO()) == 1
