"""Imports through the API: what `POST /v1/registry/models/import` checks and queues.

An import is a run of the `import` pipeline (pipelines.kfp_pipelines; the pipeline worker runs
it, with kfp.local or on Kubeflow): the gateway only checks the request, stores an uploaded
archive, and queues the run through `lifecycle.start_pipeline`, like any pipeline run. The
source is one of
- a hub repo id (`org/name`, never a path: the worker downloads it with huggingface_hub);
- an object-store key under the tenant's own prefix `imports/{tenant}/`: an archive object, or a
  folder of checkpoint files (another tenant's key answers exactly like a missing one);
- an uploaded archive, stored at `imports/{tenant}/uploads/{id}/{file name}` and deleted by the
  run when it ends, or by the sweeper (`sweep_uploads`) for a run that ended without it
  (cancelled while queued, its worker killed).

`alias` moves an alias to the imported version by force (an imported version has no evaluation
for the gate to judge): an explicit promotion recorded with the actor, which only an admin key
may make, as only an admin moves an alias through `POST .../aliases/{alias}`. Model names and
their aliases are the platform's, not a tenant's: a `registry` key that could name an alias
could move `production` of the model every tenant is served.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, BinaryIO

from . import lifecycle
from .archive import HEAD_BYTES, kind
from .errors import ApiError
from .jobstore import Principal, RunStore
from .jobstore.models import utcnow
from .queue import PipelineEnqueue
from .settings import Settings
from .storage import Storage

PIPELINE = "import"
HUB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$"
REVISION_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$"  # a branch, tag or commit
# How far back the sweeper looks for ended runs whose upload may remain (a run ends while some
# gateway's sweeper runs, every few seconds; a week covers any outage of all of them).
UPLOAD_SWEEP_WINDOW = timedelta(days=7)


def tenant_prefix(tenant: str) -> str:
    return f"imports/{tenant}/"


def _alias_allowed(who: Principal, request: dict[str, Any]) -> None:
    if request.get("alias") and "admin" not in who.scopes:
        raise ApiError(
            403,
            "alias_admin_only",
            "moving an alias is admin-only: import without `alias`, then have an admin promote "
            "the version (POST /v1/registry/models/{name}/aliases/{alias})",
        )


def _registry_configured(settings: Settings) -> None:
    if not settings.mlflow_uri:
        raise ApiError(503, "registry_unavailable", "no MLflow server configured (MOSS_MLFLOW_URI)")


def check_key(storage: Storage, tenant: str, key: str) -> str:
    """The key, if it names an object or a folder under the tenant's prefix; otherwise 404,
    the same for another tenant's key as for one that does not exist."""
    missing = ApiError(404, "not_found", f"no object {key!r} under {tenant_prefix(tenant)}")
    if not key.startswith(tenant_prefix(tenant)):
        raise missing
    try:
        folder = key.rstrip("/") + "/"
        if (key != folder and storage.exists(key)) or storage.list_keys(folder):
            return key
    except ValueError:  # not a valid object key (an empty segment, `..`)
        raise missing from None
    raise missing


@dataclass(frozen=True)
class Queue:
    """Where an import goes: the settings, the object store, and the run store and queue
    `lifecycle.start_pipeline` records and sends the run with."""

    settings: Settings
    storage: Storage
    runs: RunStore
    enqueue: PipelineEnqueue


def queue_import(
    queue: Queue, who: Principal, actor: str, request: dict[str, Any]
) -> dict[str, Any]:
    """Queue an import of a hub repo (`hub_id`) or an object-store key (`key`); `request`
    holds the fields the route checked (name, alias, revision, trained_for)."""
    settings, storage, tenant = queue.settings, queue.storage, who.tenant
    _registry_configured(settings)
    _alias_allowed(who, request)
    if bool(request.get("hub_id")) == bool(request.get("key")):
        raise ApiError(
            422, "source_required", "name the checkpoint as `hub_id` or `key` (one), or upload it"
        )
    if request.get("key"):
        check_key(storage, tenant, request["key"])
        if request.get("revision"):
            raise ApiError(422, "invalid_revision", "`revision` applies to a `hub_id` only")
    return _start(queue, who, actor, request, uploaded=False)


def upload_key(tenant: str, filename: str | None) -> str:
    """Where an uploaded archive is kept until its run is done: a fresh folder per upload, the
    client's file name reduced to safe characters (it is only a label)."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", (filename or "").rsplit("/", 1)[-1])[:100]
    name = name.lstrip(".") or "checkpoint.tar"
    return f"{tenant_prefix(tenant)}uploads/{uuid.uuid4().hex}/{name}"


def queue_upload(
    queue: Queue,
    who: Principal,
    actor: str,
    request: dict[str, Any],
    upload: tuple[BinaryIO, int, str | None],
) -> dict[str, Any]:
    """Store an uploaded archive (only if it is one: .tar, .tar.gz, .zip by its first bytes,
    and within MOSS_IMPORT_MAX_BYTES), then queue its import. Nothing is stored for a refused
    upload, and the archive is deleted again if the run cannot be queued."""
    settings, storage = queue.settings, queue.storage
    _registry_configured(settings)
    _alias_allowed(who, request)
    stream, size, filename = upload
    if size > settings.import_max_bytes:
        raise ApiError(
            413, "upload_too_large", f"the archive exceeds {settings.import_max_bytes} bytes"
        )
    stream.seek(0)
    head = stream.read(HEAD_BYTES)
    stream.seek(0)
    if size == 0 or kind(head) is None:
        raise ApiError(
            415,
            "not_an_archive",
            "the file is not a .tar, .tar.gz or .zip archive of a checkpoint directory",
        )
    key = upload_key(who.tenant, filename)
    storage.put_file(key, stream, size)
    try:
        return _start(queue, who, actor, {**request, "key": key}, uploaded=True)
    except BaseException:
        storage.delete(key)
        raise


def _start(
    queue: Queue, who: Principal, actor: str, request: dict[str, Any], uploaded: bool
) -> dict[str, Any]:
    params = {
        field: request[field]
        for field in ("name", "hub_id", "key", "revision", "alias", "trained_for")
        if request.get(field)
    }
    params |= {"actor": actor, "uploaded": uploaded}
    return lifecycle.start_pipeline(
        queue.settings, queue.enqueue, PIPELINE, params, runs=queue.runs, tenant=who.tenant,
        key_id=who.key_id,
    )  # fmt: skip


def sweep_uploads(
    storage: Storage, runs: RunStore, window: timedelta = UPLOAD_SWEEP_WINDOW
) -> list[str]:
    """Delete the uploaded archives of import runs that ended in the last `window` (the
    gateway's sweeper calls it); returns the keys it deleted.

    The run deletes its own upload when its step ends, but not when it never starts (cancelled
    while queued) or its process is killed (cancelled while running, the worker lost): an
    upload may be tens of GB. Only keys under the run's own tenant's uploads folder are
    touched, whatever the run's parameters say."""
    deleted = []
    for run in runs.ended_since(PIPELINE, utcnow() - window):
        key = (run.params or {}).get("key")
        if not (run.params or {}).get("uploaded") or not isinstance(key, str):
            continue
        if key.startswith(f"{tenant_prefix(run.tenant)}uploads/") and storage.exists(key):
            storage.delete(key)
            deleted.append(key)
    return deleted
