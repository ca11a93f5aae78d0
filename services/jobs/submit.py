"""Accepting a job: validate, store the audio, record the job (durable from here), enqueue.

The gateway runs this, so it stays torch-free: audio is probed in a child process
(model.audio_sandbox), the model reference is checked without loading anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from typing import BinaryIO

from model.audio import MIN_AUDIO_SECONDS, AudioDecodeError
from model.audio_sandbox import probe_audio_isolated
from model.sampling import SamplingError, check_sampling
from model.tasks import TASKS

from ..core.bootstrap import read_status
from ..core.egress import EgressRefused, check_webhook_url
from ..core.errors import ApiError, audio_error
from ..core.jobstate import FIRST_TASK
from ..core.jobstore import IdempotencyConflict, Job, Principal
from ..core.modelref import ModelNotFound
from ..core.modelref import check as check_model
from ..core.modelref import parse as parse_ref
from ..core.queue import PRIORITIES
from .context import Context

log = logging.getLogger("moss.jobs")


def submit_job(
    ctx: Context,
    principal: Principal,
    upload: BinaryIO,
    size: int,
    task: str,
    prompt: str | None,
    model: str | None,
    max_new_tokens: int | None,
    temperature: float,
    sampling: str = "greedy",
    idempotency_key: str | None = None,
) -> Job:
    """Validate, store the audio, record the job (durable from here), enqueue the encoder."""
    job, _ = accept_job(
        ctx, principal, upload, size, task, prompt, model, max_new_tokens, temperature,
        sampling, idempotency_key,
    )  # fmt: skip
    return job


def accept_job(
    ctx: Context,
    principal: Principal,
    upload: BinaryIO,
    size: int,
    task: str,
    prompt: str | None,
    model: str | None,
    max_new_tokens: int | None,
    temperature: float,
    sampling: str = "greedy",
    idempotency_key: str | None = None,
    sync_limit_s: float | None = None,
    webhook_url: str | None = None,
    priority: str = "normal",
) -> tuple[Job, bool]:
    """`submit_job`, and whether the job is an earlier request's (True: the same
    `Idempotency-Key` and the same request within 24 h; a different request with that key is
    409 `idempotency_key_reused`)."""
    settings = ctx.settings
    if priority not in PRIORITIES:
        raise ApiError(422, "invalid_priority", f"priority must be one of {', '.join(PRIORITIES)}")
    if priority == "high" and not principal.can("priority"):
        raise ApiError(
            403, "priority_not_allowed", "priority=high needs an API key with the priority scope"
        )
    if webhook_url is not None:
        check_webhook(ctx, principal, webhook_url)
    if task not in TASKS:
        raise ApiError(422, "invalid_task", f"task must be one of {', '.join(TASKS)}")
    if task in ("ask", "chat") and not (prompt or "").strip():
        raise ApiError(422, "prompt_required", f"task {task!r} needs a prompt")
    try:
        check_sampling(max_new_tokens, temperature, sampling)
    except SamplingError as exc:
        raise ApiError(422, exc.code, exc.message) from exc
    try:
        model_ref = check_model(model, settings)
    except ValueError as exc:
        raise ApiError(422, "invalid_model", str(exc)) from exc
    except ModelNotFound as exc:
        model_ref = _in_training(model or settings.default_model, settings)
        if model_ref is None:
            raise ApiError(422, "unknown_model", str(exc)) from exc
    if size > settings.max_upload_bytes:
        raise ApiError(413, "upload_too_large", f"the upload exceeds {settings.max_upload_mb} MB")
    if size == 0:
        raise ApiError(415, "empty_audio", "the uploaded file is empty")

    upload.seek(0)
    data = upload.read()
    audio_sha256 = hashlib.sha256(data).hexdigest()
    params = {
        "max_new_tokens": max_new_tokens or settings.max_new_tokens,
        "temperature": temperature,
        "sampling": sampling,
    }
    idempotency = None
    if idempotency_key is not None:
        request = [task, prompt, model_ref, params, audio_sha256, webhook_url, priority]
        digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
        idempotency = (idempotency_key, digest)
        if (first := ctx.store.idempotent_job(principal.tenant, idempotency_key)) is not None:
            return _replay(ctx, principal, first, digest), True
    try:  # the header, the demuxed duration and a decoded prefix; the worker decodes the rest
        info = probe_audio_isolated(
            data, max_seconds=settings.max_audio_seconds, limits=settings.decode_limits
        )
    except AudioDecodeError as exc:
        raise audio_error(exc.code, exc.message) from exc
    seconds = info.seconds
    if seconds < MIN_AUDIO_SECONDS:
        raise ApiError(
            422,
            "audio_too_short",
            f"the audio lasts {seconds:.3f} s; the minimum is {MIN_AUDIO_SECONDS:g} s",
        )
    if sync_limit_s is not None and seconds > sync_limit_s:
        raise ApiError(
            413,
            "audio_too_long_for_sync",
            f"the audio lasts {seconds:.1f} s; this route answers up to {sync_limit_s:g} s "
            "synchronously: submit it to POST /v1/jobs and read the result there",
        )

    job_id = str(uuid.uuid4())
    audio_key = f"audio/{principal.tenant}/{job_id}"
    upload.seek(0)
    ctx.storage.put_file(audio_key, upload, size)
    try:
        job = ctx.store.create_job(
            idempotency,
            id=job_id,
            tenant=principal.tenant,
            task=task,
            prompt=prompt,
            model=model_ref,
            params=params,
            audio_key=audio_key,
            audio_sha256=audio_sha256,
            audio_seconds=round(seconds, 3),
            key_id=principal.key_id,
            webhook_url=webhook_url,
            priority=priority,
        )
    except IdempotencyConflict as exc:  # a concurrent request with the same key came first
        ctx.storage.delete(audio_key)
        if exc.first is None:
            raise
        return _replay(ctx, principal, exc.first, idempotency[1]), True
    except BaseException:
        ctx.storage.delete(audio_key)  # nothing left behind
        raise
    try:
        ctx.enqueue(FIRST_TASK, job.id)
    except Exception:
        log.warning("could not enqueue job %s now; the sweeper will", job.id, exc_info=True)
    return job, False


def check_webhook(ctx: Context, principal: Principal, webhook_url: str) -> None:
    """A job's webhook: a public URL (the egress guard) and a signing secret on the key."""
    try:
        check_webhook_url(webhook_url, ctx.settings)
    except EgressRefused as exc:
        raise ApiError(422, exc.code, exc.message) from exc
    if not ctx.store.has_webhook_secret(principal.key_id):
        raise ApiError(
            422,
            "webhook_secret_missing",
            "this API key has no webhook signing secret yet: create one with "
            "POST /v1/keys/me/webhook-secret",
        )


def _in_training(ref: str, settings) -> str | None:
    """The model `mossctl up` is training on its first run: its jobs are accepted and wait in
    the queue (the workers start once it is registered)."""
    training = read_status(settings.home)
    if training is not None and training.get("model") == parse_ref(ref).name:
        return str(parse_ref(ref))
    return None


def _replay(ctx: Context, principal: Principal, first: tuple[str, str], digest: str) -> Job:
    """The job an earlier request with this Idempotency-Key made, if it was the same request."""
    first_digest, job_id = first
    if first_digest != digest:
        raise ApiError(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used in the last 24 h for a different request; use a "
            "new key for a new job",
        )
    job = ctx.store.get_job(job_id, principal.tenant)
    if job is None:  # purged since
        raise ApiError(409, "idempotency_key_reused", "the job this key made no longer exists")
    return job
