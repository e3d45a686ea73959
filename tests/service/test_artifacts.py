"""Artifact stores: a local directory and a real S3-compatible server (moto's server)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from store.artifacts import (
    ArtifactNotFound,
    ArtifactStore,
    LocalArtifactStore,
    S3ArtifactStore,
    artifact_store_from_settings,
)
from store.settings import Settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def _exercise(store: ArtifactStore, tmp: Path) -> None:
    src = tmp / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # more than one stream chunk
    src.write_bytes(payload)
    key = "proj_a/model_b.safetensors"
    assert not store.exists(key)
    store.put_file(key, src)
    assert store.exists(key) and store.size(key) == len(payload)
    assert b"".join(store.open_stream(key)) == payload
    dest = tmp / "out" / "copy.bin"
    store.get_file(key, dest)
    assert dest.read_bytes() == payload
    src.write_bytes(b"second version")
    store.put_file(key, src)  # overwrite
    assert b"".join(store.open_stream(key)) == b"second version"
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # idempotent
    for call in (lambda: store.size(key), lambda: store.open_stream(key), lambda: store.get_file(key, dest)):
        with pytest.raises(ArtifactNotFound):
            call()
    assert not list((tmp / "out").glob(".*.tmp"))
    with pytest.raises(ValueError):
        store.put_file("../escape", src)


def test_local_store(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalArtifactStore(root)
    assert isinstance(store, ArtifactStore)
    _exercise(store, tmp_path)
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_s3_store_against_moto_server(s3_endpoint: str, tmp_path: Path) -> None:
    creds = {"aws_access_key_id": "test", "aws_secret_access_key": "test", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=s3_endpoint, **creds).create_bucket(Bucket="fishdip")
    settings = Settings(
        artifact_url="s3://fishdip/deltas",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",
    )
    store = artifact_store_from_settings(settings)
    assert isinstance(store, S3ArtifactStore) and store.prefix == "deltas"
    _exercise(store, tmp_path)
    store.put_file("k/x.bin", tmp_path / "src.bin")
    listed = boto3.client("s3", endpoint_url=s3_endpoint, **creds).list_objects_v2(Bucket="fishdip")
    assert [o["Key"] for o in listed["Contents"]] == ["deltas/k/x.bin"]


def test_store_from_settings_local(tmp_path: Path) -> None:
    store = artifact_store_from_settings(Settings(artifact_url=f"file://{tmp_path}/a"))
    assert isinstance(store, LocalArtifactStore) and store.root == (tmp_path / "a").resolve()
