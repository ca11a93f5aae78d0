"""Where a `mossctl train` run reads and writes: local paths, or object-store URLs.

A TrainJob's pods share no disk with whoever created the job, so MANIFEST, `--output` and
`--resume` may be `s3://bucket/key` URLs (the endpoint and keys are the platform's MOSS_S3_*
settings). A run then trains in a local folder and publishes it to the URL: the release files
and the resume state from rank 0, and each node's Distributed Checkpoint shards from that
node's first process, so several nodes need no shared file system. A plain MANIFEST that is no
local file is read as a key of the platform's object store (`datasets/NAME/manifest.jsonl`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.core.settings import Settings
from services.core.storage import LocalStorage, S3Storage, make_storage

S3_URL = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>\S*)")


def is_url(value: str) -> bool:
    return value.startswith("s3://")


def s3(url: str, settings: Settings) -> tuple[S3Storage, str]:
    """The bucket of `url` on the platform's S3 endpoint, and the key (a prefix) in it."""
    match = S3_URL.fullmatch(url)
    if match is None:
        raise ValueError(f"{url!r} is not an object-store URL (s3://bucket/key)")
    if not settings.s3_endpoint:
        raise ValueError(f"{url}: s3:// URLs need the object store's endpoint (MOSS_S3_ENDPOINT)")
    secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
    access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
    storage = S3Storage(settings.s3_endpoint, match["bucket"], access, secret,
                        settings.s3_region, settings.s3_secure)  # fmt: skip
    return storage, match["key"].strip("/")


def manifest_source(manifest: str, settings: Settings) -> tuple[Any, str]:
    """(storage, key) to read a manifest and its audio from: a URL, a local file (its folder as
    the store, so relative audio paths resolve; inside a local store's `datasets/` folder, that
    store, so `datasets/...` audio keys resolve too), or a key of the platform's store."""
    if is_url(manifest):
        return s3(manifest, settings)
    path = Path(manifest).expanduser()
    if path.is_file():
        path = path.resolve()
        parts = path.parts
        if "datasets" in parts[:-1]:  # inside a local store: its lines may name store keys
            at = len(parts) - 1 - parts[::-1].index("datasets")
            return LocalStorage(Path(*parts[:at])), "/".join(parts[at:])
        return LocalStorage(path.parent), path.name
    storage = make_storage(settings)
    if path.is_absolute() or manifest.startswith((".", "~")) or not storage.exists(manifest):
        raise ValueError(f"{manifest}: no such manifest file (nor an object-store key)")
    return storage, manifest


def fetch_tree(url: str, local: Path, settings: Settings) -> Path:
    """Every object under `url` copied into `local`, with its relative path."""
    storage, prefix = s3(url, settings)
    keys = storage.list_keys(prefix + "/")
    if not keys:
        raise FileNotFoundError(f"{url}: nothing there to resume from")
    for key in keys:
        target = local / key[len(prefix) + 1 :]
        target.parent.mkdir(parents=True, exist_ok=True)
        storage.download(key, target)
    return local


def publish_tree(
    local: Path, url: str, settings: Settings, keep: Callable[[Path], bool] = lambda _p: True
) -> list[str]:
    """The files under `local` that `keep` accepts, uploaded under `url`; returns their keys."""
    storage, prefix = s3(url, settings)
    written = []
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        relative = path.relative_to(local)
        if not keep(relative):
            continue
        key = f"{prefix}/{relative.as_posix()}"
        with path.open("rb") as handle:
            storage.put_file(key, handle, path.stat().st_size)
        written.append(key)
    return written
