"""Annotation jobs, the gateway's half: check the items against the tenant's dataset, store
them as the job's input (each with every label it has: the worker keeps them) and enqueue the
`annotate` stage (the worker's half, which loads the engine, is services.jobs.annotate).
Torch-free, like everything the gateway imports."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import Any

from ..core import dataset_store
from ..core.datasets import annotation_item, check_line
from ..core.errors import ApiError
from ..core.jobstate import ANNOTATION_TASK, Stage
from ..core.jobstore import Job, Principal
from ..core.labels import check_label_map
from .context import Context
from .submit import check_webhook

log = logging.getLogger("moss.jobs")


def submit_annotation(
    ctx: Context,
    principal: Principal,
    dataset: str,
    items: list[dict[str, Any]] | None,
    webhook_url: str | None = None,
    label_map: dict[str, str] | None = None,
) -> Job:
    """Record an annotation job over `items` (manifest lines whose `audio` is
    "audio/<sha256>", uploaded to the dataset, with any labels) or, without items, every clip
    of the committed dataset; `label_map` renames the engine's event labels."""
    settings, storage = ctx.settings, ctx.storage
    try:
        base = dataset_store.prefix(principal.tenant, dataset)
    except dataset_store.DatasetError as exc:
        raise ApiError(422, exc.code, str(exc)) from None
    if items is None:
        try:
            info = dataset_store.get_dataset(storage, principal.tenant, dataset)
        except dataset_store.DatasetError as exc:
            raise ApiError(404, exc.code, f"{exc}: upload it, or send `items`") from None
        lines = storage.get_bytes(info.manifest).decode().splitlines()
        items = [json.loads(line) for line in lines if line.strip()]
    if not items:
        raise ApiError(422, "no_items", "nothing to annotate: `items` is empty")
    if len(items) > settings.annotation_max_items:
        raise ApiError(422, "too_many_items", f"at most {settings.annotation_max_items} items per "
                       "job: split the set")  # fmt: skip
    if webhook_url is not None:
        check_webhook(ctx, principal, webhook_url)
    if label_map is not None:
        try:
            label_map = check_label_map(label_map)
        except ValueError as exc:
            raise ApiError(422, "invalid_label_map", str(exc)) from None
    clean, missing = [], []
    for n, item in enumerate(items, 1):
        audio = str(item.get("audio", "")).removeprefix(base)
        key = f"{base}{audio}"
        if not audio.startswith("audio/") or not storage.exists(key):
            missing.append(f"item {n}: {item.get('audio')!r}")
            continue
        entry = annotation_item(item, n, key)
        _, problems = check_line(n, json.dumps(entry), need_label=False)
        if problems:
            raise ApiError(422, "invalid_item", f"item {n}: " + "; ".join(
                f"{p.field or 'line'}: {p.message}" for p in problems[:5]))  # fmt: skip
        clean.append(entry)
    if missing:
        raise ApiError(422, "audio_not_found", f"{len(missing)} item(s) name audio not uploaded "
                       f"to dataset {dataset!r}: " + "; ".join(missing[:5]))  # fmt: skip
    job_id = str(uuid.uuid4())
    raw = ("\n".join(json.dumps(i, sort_keys=True) for i in clean) + "\n").encode()
    input_key = f"annotations/{principal.tenant}/{job_id}/input.jsonl"
    storage.put_bytes(input_key, raw)
    try:
        job = ctx.store.create_job(
            id=job_id, tenant=principal.tenant, task=ANNOTATION_TASK, prompt=None,
            model=settings.annotation_model or settings.default_model,
            params={"dataset": dataset, "items": len(clean),
                    **({"label_map": label_map} if label_map else {})},
            audio_key=input_key,
            audio_sha256=hashlib.sha256(raw).hexdigest(), audio_seconds=0.0,
            key_id=principal.key_id, webhook_url=webhook_url,
        )  # fmt: skip
    except BaseException:
        storage.delete(input_key)  # nothing left behind
        raise
    try:
        ctx.enqueue(str(Stage.ANNOTATE), job.id)
    except Exception:
        log.warning("could not enqueue job %s now; the sweeper will", job.id, exc_info=True)
    return job
