"""Datasets in the object store, per tenant: content-addressed audio, a checked manifest, and a
record of what was committed.

    datasets/{tenant}/{name}/audio/{sha256}   the clips, named by their digest
    datasets/{tenant}/{name}/manifest.jsonl   the valid lines, audio rewritten to those keys
    datasets/{tenant}/{name}/dataset.json     digest, counts per split and family, time

Audio goes first (each object checked against the digest it is sent under, so an upload that
breaks off or lies leaves nothing), then the manifest. A dataset exists once its manifest is
committed: until then, its audio is invisible to `list` and to training. Naming audio by digest
makes a re-upload send only what changed, and the manifest's digest is the dataset's identity
in every training run (its MLflow lineage).
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO

from .datasets import check_manifest
from .sft import families_of
from .storage import ObjectNotFound, Storage

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DIGEST = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1024 * 1024


class DatasetError(ValueError):
    """Bad input about a dataset; `code` is the API's machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class DatasetInfo:
    name: str
    manifest: str  # the object key a pipeline run takes as its `manifest`
    digest: str  # sha256 of the committed manifest
    clips: int
    splits: dict[str, int]
    families: list[str]
    created_at: str
    skipped_lines: int = 0
    problems: list[str] = field(default_factory=list)  # of the upload that committed it


def prefix(tenant: str, name: str) -> str:
    if not NAME.match(name):
        raise DatasetError(
            "invalid_dataset_name",
            "a dataset name is 1-64 of a-z, 0-9, '.', '_', '-', starting with a letter or digit",
        )
    return f"datasets/{tenant}/{name}/"


def audio_key(tenant: str, name: str, digest: str) -> str:
    if not DIGEST.match(digest):
        raise DatasetError("invalid_digest", "an audio digest is 64 lowercase hex digits (sha256)")
    return f"{prefix(tenant, name)}audio/{digest}"


def missing_audio(storage: Storage, tenant: str, name: str, digests: list[str]) -> list[str]:
    """The digests the store does not have yet: what a client still has to send."""
    prefix(tenant, name)  # a bad name is refused even with nothing to check
    return [d for d in dict.fromkeys(digests) if not storage.exists(audio_key(tenant, name, d))]


def put_audio(
    storage: Storage, tenant: str, name: str, digest: str, stream: BinaryIO, limit: int
) -> int:
    """Store one clip under its digest. The bytes are spooled and hashed first: a body that is
    too large, breaks off or does not match its digest is refused and nothing is stored."""
    key = audio_key(tenant, name, digest)
    if stream.seekable():  # already spooled by the caller: hash it in place
        size = _check(stream, digest, limit)
        stream.seek(0)
        storage.put_file(key, stream, size)
        return size
    with tempfile.SpooledTemporaryFile(max_size=8 * CHUNK) as spool:
        while chunk := stream.read(CHUNK):
            spool.write(chunk)
            if spool.tell() > limit:
                raise DatasetError("upload_too_large", f"an audio file exceeds {limit} bytes")
        spool.seek(0)
        return put_audio(storage, tenant, name, digest, spool, limit)


def _check(stream: BinaryIO, digest: str, limit: int) -> int:
    hasher, size = hashlib.sha256(), 0
    while chunk := stream.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise DatasetError("upload_too_large", f"an audio file exceeds {limit} bytes")
        hasher.update(chunk)
    if size == 0:
        raise DatasetError("empty_upload", "the audio file is empty")
    if hasher.hexdigest() != digest:
        raise DatasetError(
            "digest_mismatch", f"the body's sha256 is {hasher.hexdigest()}, not {digest}"
        )
    return size


def commit_manifest(
    storage: Storage, tenant: str, name: str, raw: bytes, default_prompt: str = "",
    strict: bool = False,
) -> DatasetInfo:  # fmt: skip
    """Check every line; store the valid ones as the dataset's manifest and record it.

    Audio is named `audio/{sha256}` (relative to the dataset) or by its full key, and must have
    been uploaded. Bad lines are reported and left out; with `strict`, any bad line refuses the
    whole manifest. A manifest with no valid line is refused.
    """
    base = prefix(tenant, name)
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        message = f"the manifest is not UTF-8 ({exc.reason} at byte {exc.start})"
        raise DatasetError("invalid_manifest", message) from None

    def key_of(audio: str) -> str | None:
        """`audio/<sha256>` of this dataset, or the full key of one of the tenant's datasets
        (an annotation's output names the audio of the dataset it came from)."""
        if audio.startswith(f"datasets/{tenant}/"):
            parts = audio.split("/")
            ok = len(parts) == 5 and parts[3] == "audio" and DIGEST.match(parts[4])
            return audio if ok and NAME.match(parts[2]) else None
        digest = audio.removeprefix("audio/")
        return f"{base}audio/{digest}" if DIGEST.match(digest) else None

    def exists(audio: str) -> bool:
        key = key_of(audio)
        return key is not None and storage.exists(key)

    checked = check_manifest(lines, audio_exists=exists, default_prompt=default_prompt)
    problems = [str(p) for p in checked.problems]
    if not checked.clips or (strict and problems):
        reason = "no valid line" if not checked.clips else f"{checked.bad_lines} bad line(s)"
        raise DatasetError("invalid_manifest", f"manifest refused ({reason}): "
                           + "; ".join(problems[:5]))  # fmt: skip
    out, splits = [], {}
    for clip in checked.clips:
        clip["audio"] = key_of(clip["audio"])
        splits[clip["split"]] = splits.get(clip["split"], 0) + 1
        out.append(json.dumps(clip, sort_keys=True, ensure_ascii=False))
    manifest = ("\n".join(out) + "\n").encode()
    info = DatasetInfo(
        name=name,
        manifest=f"{base}manifest.jsonl",
        digest=hashlib.sha256(manifest).hexdigest(),
        clips=len(checked.clips),
        splits=dict(sorted(splits.items())),
        families=sorted(families_of(checked.clips)),
        created_at=datetime.now(UTC).isoformat(),
        skipped_lines=checked.bad_lines,
        problems=problems[:100],
    )
    storage.put_bytes(info.manifest, manifest)
    storage.put_bytes(f"{base}dataset.json", json.dumps(asdict(info)).encode())
    return info


def get_dataset(storage: Storage, tenant: str, name: str) -> DatasetInfo:
    try:
        raw = storage.get_bytes(f"{prefix(tenant, name)}dataset.json")
    except ObjectNotFound:
        raise DatasetError("not_found", f"no dataset {name!r}") from None
    return DatasetInfo(**json.loads(raw))


def list_datasets(storage: Storage, tenant: str) -> list[DatasetInfo]:
    """The tenant's committed datasets (a folder without a manifest is an upload in progress)."""
    out = []
    for key in storage.list_keys(f"datasets/{tenant}/"):
        parts = key.split("/")
        if len(parts) == 4 and parts[3] == "dataset.json":
            out.append(DatasetInfo(**json.loads(storage.get_bytes(key))))
    return sorted(out, key=lambda d: d.name)


def delete_dataset(storage: Storage, tenant: str, name: str) -> int:
    """Remove the dataset and its audio; returns how many objects went."""
    keys = storage.list_keys(prefix(tenant, name))
    if not keys:
        raise DatasetError("not_found", f"no dataset {name!r}")
    record = f"{prefix(tenant, name)}dataset.json"
    for key in sorted(keys, key=lambda k: k == record, reverse=True):  # the record first
        storage.delete(key)
    return len(keys)
