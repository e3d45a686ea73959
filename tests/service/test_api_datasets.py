"""POST/GET/DELETE /v1/datasets in JSON, JSONL and multipart (JSONL, CoNLL) forms."""

from __future__ import annotations

import json

from api_support import count_rows, ner_example, ner_job
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

CONLL = """-DOCSTART- -X- O O

Barack NNP B-NP B-person
Obama NNP I-NP I-person
visited VBD B-VP O
Paris NNP B-NP B-location
. . O O

Ada NNP B-NP B-person
sleeps VBZ B-VP O
"""


def test_json_dataset_roundtrip_and_use_in_job(client: TestClient, auth: dict[str, str]) -> None:
    examples = [ner_example(i) for i in range(3)]
    r = client.post("/v1/datasets", json={"task_type": "ner", "examples": examples}, headers=auth)
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["id"].startswith("ds_") and ds["n_examples"] == 3
    assert ds["label_counts"] == {"person": 3, "location": 3}
    full = client.get(f"/v1/datasets/{ds['id']}", params={"include_examples": 1}, headers=auth).json()
    assert len(full["examples"]) == 3 and full["examples"][0]["text"] == examples[0]["text"]
    job = client.post("/v1/jobs", json=ner_job(training_data={"dataset_id": ds["id"]}), headers=auth)
    assert job.status_code == 201 and job.json()["training_dataset_id"] == ds["id"]
    assert client.get("/v1/datasets", headers=auth).json()["data"][0]["id"] == ds["id"]
    assert client.delete(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 204
    assert client.get(f"/v1/datasets/{ds['id']}", headers=auth).status_code == 404
    # The job kept its own copy of the examples.
    assert client.get(f"/v1/jobs/{job.json()['id']}", headers=auth).status_code == 200


def test_jsonl_body_reports_every_bad_line(
    client: TestClient, auth: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    good = json.dumps(ner_example(0))
    bad_offsets = ner_example(1)
    bad_offsets["entities"][0]["end"] = 999
    lines = [good, "{not json", "", json.dumps(bad_offsets), good, "[1, 2"]
    before = count_rows(session_factory)
    r = client.post(
        "/v1/datasets",
        params={"task_type": "ner"},
        content="\n".join(lines).encode(),
        headers={**auth, "Content-Type": "application/x-ndjson"},
    )
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["error"]["details"]]
    assert "/lines/2" in locs and "/lines/6" in locs
    assert "/examples/1/entities/0/end" in locs
    assert count_rows(session_factory) == before
    ok = client.post(
        "/v1/datasets",
        params={"task_type": "ner"},
        content=(good + "\n" + good + "\n").encode(),
        headers={**auth, "Content-Type": "application/x-ndjson"},
    )
    assert ok.status_code == 201 and ok.json()["n_examples"] == 2


def test_multipart_conll_and_jsonl(client: TestClient, auth: dict[str, str]) -> None:
    r = client.post(
        "/v1/datasets",
        files={"file": ("train.conll", CONLL.encode(), "text/plain")},
        data={"task_type": "ner"},
        headers=auth,
    )
    assert r.status_code == 201, r.text
    assert r.json()["n_examples"] == 2 and r.json()["label_counts"] == {"person": 2, "location": 1}
    stored = client.get(f"/v1/datasets/{r.json()['id']}?include_examples=1", headers=auth).json()["examples"]
    first = stored[0]
    assert first["text"][first["entities"][0]["start"] : first["entities"][0]["end"]] == "Barack Obama"
    jsonl = (json.dumps(ner_example(2)) + "\n").encode()
    r = client.post(
        "/v1/datasets",
        params={"task_type": "ner"},
        files={"file": ("train.jsonl", jsonl, "application/jsonl")},
        headers=auth,
    )
    assert r.status_code == 201 and r.json()["n_examples"] == 1


def test_bad_dataset_requests(
    client: TestClient, auth: dict[str, str], session_factory: sessionmaker[Session]
) -> None:
    before = count_rows(session_factory)
    cases = [
        ({"task_type": "ner", "examples": []}, "/examples"),
        ({"task_type": "sentiment", "examples": [ner_example(0)]}, "/task_type"),
        ({"task_type": "ner", "examples": "nope"}, "/examples"),
        (
            {"task_type": "ner", "task": {"labels": ["person"]}, "examples": [ner_example(0)]},
            "/examples/0/entities/1/label",
        ),
    ]
    for body, loc in cases:
        r = client.post("/v1/datasets", json=body, headers=auth)
        assert r.status_code == 422, (body, r.text)
        assert loc in [d["loc"] for d in r.json()["error"]["details"]], r.json()
    r = client.post("/v1/datasets", content=b"{oops", headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = client.post("/v1/datasets", content=b"x", headers={**auth, "Content-Type": "text/csv"})
    assert r.status_code == 415 and r.json()["error"]["type"] == "unsupported_media_type"
    assert count_rows(session_factory) == before
