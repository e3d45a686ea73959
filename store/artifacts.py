"""Artifact storage: a local directory, or an S3-compatible bucket for several machines.

Keys are relative, ``/``-separated names such as ``proj_x/model_y.safetensors``. Writes
are atomic in both stores: a reader sees the old object or the new one, never half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol, runtime_checkable

from store.settings import Settings

CHUNK_BYTES = 1024 * 1024


class ArtifactNotFound(KeyError):
    """No object is stored under this key."""


@runtime_checkable
class ArtifactStore(Protocol):
    def put_file(self, key: str, path: str | Path) -> None: ...
    def get_file(self, key: str, dest_path: str | Path) -> None: ...
    def open_stream(self, key: str) -> Iterator[bytes]: ...
    def size(self, key: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...


def _check_key(key: str) -> str:
    # Keys come from our own code, but a ".." would let one escape the root directory.
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"invalid artifact key {key!r}")
    return key


def _atomic_copy(src: str | Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(src, "rb") as inp:
            shutil.copyfileobj(inp, out, CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LocalArtifactStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_file(self, key: str, path: str | Path) -> None:
        _atomic_copy(path, self._path(key))

    def get_file(self, key: str, dest_path: str | Path) -> None:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(key)
        _atomic_copy(src, Path(dest_path))

    def open_stream(self, key: str) -> Iterator[bytes]:
        src = self._path(key)
        if not src.is_file():
            raise ArtifactNotFound(key)
        # Opened now, so a missing file fails here and not half-way through a response.
        handle = open(src, "rb")  # noqa: SIM115 - closed by the generator
        return _read_chunks(handle)

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise ArtifactNotFound(key) from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()


def _read_chunks(handle: Any) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK_BYTES):
            yield chunk


class S3ArtifactStore:
    """S3 or any S3-compatible server (MinIO, moto). Uploads go through boto3's managed
    transfer, which only makes the object visible once every part has arrived."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        client: Any = None,
    ) -> None:
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
        )

    def _key(self, key: str) -> str:
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _is_missing(self, exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, key: str, path: str | Path) -> None:
        self.client.upload_file(str(path), self.bucket, self._key(key))

    def get_file(self, key: str, dest_path: str | Path) -> None:
        from botocore.exceptions import ClientError

        dest = Path(dest_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
        os.close(fd)
        try:
            self.client.download_file(self.bucket, self._key(key), tmp)
            os.replace(tmp, dest)
        except ClientError as exc:
            Path(tmp).unlink(missing_ok=True)
            if self._is_missing(exc):
                raise ArtifactNotFound(key) from exc
            raise
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def open_stream(self, key: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._is_missing(exc):
                raise ArtifactNotFound(key) from exc
            raise
        body = obj["Body"]
        return _stream_body(body)

    def size(self, key: str) -> int:
        from botocore.exceptions import ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if self._is_missing(exc):
                raise ArtifactNotFound(key) from exc
            raise
        return int(head["ContentLength"])

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ArtifactNotFound:
            return False
        return True


def _stream_body(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


def artifact_store_from_settings(settings: Settings) -> ArtifactStore:
    url = settings.artifact_url
    if url.startswith("s3://"):
        bucket, _, prefix = url[len("s3://") :].partition("/")
        return S3ArtifactStore(
            bucket,
            prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=settings.s3_secret_access_key,
        )
    if url.startswith("file://"):
        url = url[len("file://") :]
    return LocalArtifactStore(url)
