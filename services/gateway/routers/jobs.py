"""Jobs: submit audio, read (with long polling), list and cancel the caller's own jobs.

A tenant only ever sees its own jobs: another tenant's job is 404, not 403, so ids leak nothing.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import (
    APIRouter,
    Depends,
    File,
    Form,
    Query,
    Response,
    UploadFile,
)
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ...core.egress import EgressRefused, check_audio_url
from ...core.errors import ApiError
from ...core.jobstate import ACTIVE, Status
from ...core.jobstore import Job, JobStore, Principal
from ...jobs.retention import purge_job
from ...jobs.submit import accept_job
from ..bodies import StrictRoute
from ..deps import App, Ctx, IdempotencyKey, Jobs, creates_job, only_form_fields
from ..errors import AUTHENTICATED, BODY, PARAMS, responses
from ..outbound import fetch_audio
from ..schemas import (
    MAX_NEW_TOKENS_RANGE,
    TEMPERATURE_HELP,
    TEMPERATURE_RANGE,
    JobList,
    JobOut,
    Priority,
    Sampling,
    Task,
)
from ..streaming import SSE, STREAM_HEADERS, LastEventId, event_stream

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], route_class=StrictRoute, responses=AUTHENTICATED
)
MAX_OFFSET = 10**9  # past any tenant's job count; a bigger one overflowed the database's integer
JOB_FIELDS = (
    "file", "audio_url", "task", "prompt", "model", "max_new_tokens", "temperature", "sampling",
    "webhook_url", "priority",
)  # fmt: skip


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={**BODY, **responses(409, 415, 503)},
    dependencies=[Depends(only_form_fields(*JOB_FIELDS)), Depends(creates_job)],
)
def create_job(
    ctx: Ctx,
    who: Jobs,
    response: Response,
    task: Annotated[Task, Form(description="What to do with the audio.")],
    file: Annotated[
        UploadFile | None, File(description="The audio (wav, flac, ogg, mp3, m4a...).")
    ] = None,
    audio_url: Annotated[
        str | None,
        Form(
            description="Instead of `file`: an http(s) URL the gateway downloads the audio "
            "from: a presigned URL of the object store, or a host the operator allows "
            "(MOSS_AUDIO_URL_HOSTS). Redirects are not followed."
        ),
    ] = None,
    prompt: Annotated[str | None, Form(max_length=8000)] = None,
    model: Annotated[str | None, Form(description="`name` or `name@alias`.")] = None,
    max_new_tokens: Annotated[
        int | None,
        Form(
            description="The answer's budget (default MOSS_MAX_NEW_TOKENS).",
            json_schema_extra=MAX_NEW_TOKENS_RANGE,
        ),
    ] = None,
    temperature: Annotated[
        float, Form(description=TEMPERATURE_HELP, json_schema_extra=TEMPERATURE_RANGE)
    ] = 0.0,
    sampling: Annotated[
        Sampling,
        Form(
            description="`greedy` (default; `temperature` applies) or `model`: the "
            "checkpoint's own generation_config.json (the release: sampling, temperature 1.0, "
            "top_p 1.0, top_k 50)."
        ),
    ] = "greedy",
    webhook_url: Annotated[
        str | None,
        Form(
            description="POSTed to, signed, when the job succeeds, fails or is cancelled "
            "(docs/api.md, Webhooks). Public addresses only, unless the operator allows a "
            "network (MOSS_EGRESS_ALLOW_NETWORKS)."
        ),
    ] = None,
    priority: Annotated[
        Priority,
        Form(
            description="`normal` or `high` (its own queues, served first; needs a key with "
            "the `priority` scope)."
        ),
    ] = "normal",
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    """Submit audio (a `file`, or an `audio_url`). Answers 202 with the job; poll `Location`,
    follow `/events`, or name a `webhook_url`."""
    if (file is None) == (audio_url is None):
        raise ApiError(422, "audio_required", "send the audio as `file` or as `audio_url` (one)")
    if file is not None:
        stream, size = file.file, file.size if file.size is not None else upload_size(file)
    else:
        try:
            pinned = check_audio_url(audio_url, ctx.settings)
        except EgressRefused as exc:
            raise ApiError(422, exc.code, exc.message) from exc
        stream, size = fetch_audio(pinned, ctx.settings)
    try:
        job, replayed = accept_job(
            ctx, who, stream, size, task, prompt, model, max_new_tokens, temperature, sampling,
            idempotency_key, webhook_url=webhook_url, priority=priority,
        )  # fmt: skip
    finally:
        if file is None:
            stream.close()
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(job)


@router.get("/{job_id}", response_model=JobOut, responses={**PARAMS, **responses(404)})
async def get_job(
    ctx: Ctx,
    gw: App,
    job_id: str,
    who: Jobs,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=60,
            description="Long poll: answer as soon as the job ends, or after "
            "this many seconds, whichever comes first.",
        ),
    ] = 0,
) -> JobOut:
    deadline = time.monotonic() + wait
    job = await run_in_threadpool(own_job, ctx.store, job_id, who)
    if job.status in ACTIVE and wait > 0:
        async with gw.watch.watch(job_id) as changed:
            job = await run_in_threadpool(own_job, ctx.store, job_id, who)  # read after subscribing
            while job.status in ACTIVE and (left := deadline - time.monotonic()) > 0:
                await changed(left)
                job = await run_in_threadpool(own_job, ctx.store, job_id, who)
    if not job.webhook_url:
        return JobOut.of(job)
    return JobOut.of(job, await run_in_threadpool(ctx.store.deliveries, job.id))


@router.get(
    "/{job_id}/events",
    responses={**PARAMS, **responses(404), **SSE},
    response_class=StreamingResponse,
)
async def job_events(
    ctx: Ctx,
    gw: App,
    job_id: str,
    who: Jobs,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """The job's events as server-sent events: `change` (status, stage, progress), `text` (a
    segment's answer so far), and a last `done` with the whole job; each event's `id` resumes
    the stream after it."""
    job = await run_in_threadpool(own_job, ctx.store, job_id, who)  # 404 before any byte
    return StreamingResponse(
        _stream(ctx, gw, job.id, who, last_event_id or "0"),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


def _stream(ctx, gw, job_id: str, who: Principal, after: str):
    """Replay what the client missed, then follow; the job store says when it is over."""

    async def read() -> tuple[bool, str]:
        job = await run_in_threadpool(own_job, ctx.store, job_id, who)
        return job.status not in ACTIVE, JobOut.of(job).model_dump_json()

    return event_stream(gw.watch, job_id, after, read)


@router.get("", response_model=JobList, responses=PARAMS)
def list_jobs(
    ctx: Ctx,
    who: Jobs,
    status: Annotated[Status | None, Query(description="Only the jobs in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobList:
    """The caller's jobs, newest first."""
    rows, total = ctx.store.list_jobs(who.tenant, status, limit, offset)
    return JobList(jobs=[JobOut.of(r) for r in rows], total=total, limit=limit, offset=offset)


@router.delete("/{job_id}", response_model=JobOut, responses={**PARAMS, **responses(404, 409)})
def cancel_job(
    ctx: Ctx,
    job_id: str,
    who: Jobs,
    purge: Annotated[
        bool,
        Query(
            description="Also delete the job's audio, features and result (cancelling it "
            "first if it still runs). The job's record stays, with `purged_at`."
        ),
    ] = False,
) -> JobOut:
    """Cancel a queued or running job (a running one stops at its next decoding step), or
    with `purge=true` delete what it holds."""
    job = own_job(ctx.store, job_id, who)
    if purge:
        purge_job(ctx, job_id)
        return JobOut.of(ctx.store.get_job(job_id))
    if job.status not in ACTIVE or not ctx.store.request_cancel(job_id):
        raise ApiError(409, "job_finished", f"the job has already ended ({job.status})")
    return JobOut.of(ctx.store.get_job(job_id))


def own_job(store: JobStore, job_id: str, who: Principal) -> Job:
    job = store.get_job(job_id, tenant=who.tenant)
    if job is None:
        raise ApiError(404, "not_found", "no such job")
    return job


def upload_size(upload: UploadFile) -> int:
    """The upload's size when the client sent no length for the part."""
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    return size
