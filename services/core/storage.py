"""One storage interface for audio, features and checkpoints, with two backends.

`LocalStorage` keeps objects as files under a directory (the embedded stack); `S3Storage` talks
to any S3 API with the `minio` client (MinIO, SeaweedFS, cloud S3) and assumes nothing
MinIO-specific. Writes are all-or-nothing: a local object appears by atomic rename, an S3 object
only when its upload completes, so a failed or rejected write leaves nothing behind.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, Protocol

from .settings import Settings

PART_SIZE = 16 * 1024 * 1024
CHUNK = 1024 * 1024
Progress = Callable[[int, int], None]  # (bytes so far, bytes in all)


class ObjectNotFound(KeyError):
    pass


class Storage(Protocol):
    def put_file(self, key: str, stream: BinaryIO, length: int) -> None: ...

    def put_bytes(self, key: str, data: bytes) -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def download(self, key: str, path: Path, progress: Progress | None = None) -> int:
        """Stream an object into the file `path` (never whole in memory: a checkpoint is
        gigabytes); returns its size."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a folder: it ends with `/`), sorted."""
        ...

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Every key under `prefix` with its size in bytes, as the listing says (so a caller
        can refuse a folder that is too large before it downloads any of it)."""
        ...

    def ping(self) -> None:
        """Raise if the store cannot be reached."""


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key {key!r}")
    return key


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put_file(self, key: str, stream: BinaryIO, length: int) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                remaining = length
                while remaining > 0:
                    chunk = stream.read(min(remaining, 1024 * 1024))
                    if not chunk:
                        raise OSError(f"stream ended {remaining} bytes early")
                    out.write(chunk)
                    remaining -= len(chunk)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_file(key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None

    def download(self, key: str, path: Path, progress: Progress | None = None) -> int:
        source = self._path(key)
        try:
            handle = source.open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with handle, Path(path).open("wb") as out:
            return _copy(handle, out, source.stat().st_size, progress)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list_keys(self, prefix: str) -> list[str]:
        folder = self._path(prefix.rstrip("/"))
        if not folder.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".upload-")
        )

    def list_sizes(self, prefix: str) -> dict[str, int]:
        return {key: self._path(key).stat().st_size for key in self.list_keys(prefix)}

    def ping(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise OSError(f"{self.root} is not writable")


class S3Storage:
    def __init__(
        self,
        endpoint: str,
        bucket: str,
        access_key: str | None,
        secret_key: str | None,
        region: str | None = None,
        secure: bool = True,
    ) -> None:
        from minio import Minio

        endpoint = endpoint.removeprefix("https://").removeprefix("http://").rstrip("/")
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, region=region, secure=secure
        )
        self.bucket = bucket
        if not self.client.bucket_exists(bucket):
            self.client.make_bucket(bucket)

    def put_file(self, key: str, stream: BinaryIO, length: int) -> None:
        self.client.put_object(
            self.bucket,
            _check_key(key),
            stream,
            length,
            content_type="application/octet-stream",
            part_size=PART_SIZE,
        )

    def put_bytes(self, key: str, data: bytes) -> None:
        self.put_file(key, io.BytesIO(data), len(data))

    def get_bytes(self, key: str) -> bytes:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, _check_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(key) from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def download(self, key: str, path: Path, progress: Progress | None = None) -> int:
        from minio.error import S3Error

        try:
            response = self.client.get_object(self.bucket, _check_key(key))
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject"):
                raise ObjectNotFound(key) from None
            raise
        try:
            total = int(response.headers.get("Content-Length") or 0)
            with Path(path).open("wb") as out:
                return _copy(response, out, total, progress)
        finally:
            response.close()
            response.release_conn()

    def exists(self, key: str) -> bool:
        from minio.error import S3Error

        try:
            self.client.stat_object(self.bucket, _check_key(key))
            return True
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchObject", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.remove_object(self.bucket, _check_key(key))

    def list_keys(self, prefix: str) -> list[str]:
        _check_key(prefix.rstrip("/"))
        found = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return sorted(item.object_name for item in found)

    def list_sizes(self, prefix: str) -> dict[str, int]:
        _check_key(prefix.rstrip("/"))
        found = self.client.list_objects(self.bucket, prefix=prefix, recursive=True)
        return dict(sorted((item.object_name, int(item.size or 0)) for item in found))

    def ping(self) -> None:
        self.client.bucket_exists(self.bucket)


def _copy(source, out: BinaryIO, total: int, progress: Progress | None) -> int:
    done = 0
    while block := source.read(CHUNK):
        out.write(block)
        done += len(block)
        if progress:
            progress(done, total)
    return done


def make_storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        if not settings.s3_endpoint:
            raise ValueError("MOSS_STORAGE=s3 needs MOSS_S3_ENDPOINT")
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
        return S3Storage(
            settings.s3_endpoint,
            settings.s3_bucket,
            access,
            secret,
            settings.s3_region,
            settings.s3_secure,
        )
    return LocalStorage(settings.resolved_storage_dir)
