"""`POST /v1/audio/transcriptions`, as OpenAI's client sends it, on the job machinery: the
request becomes a job (durable, tenant-scoped, listed in `GET /v1/jobs`) and the route answers
when it ends, for audio up to MOSS_SYNC_MAX_AUDIO_SECONDS (longer: 413 pointing to /v1/jobs);
with `stream=true`, as the text grows (server-sent events in OpenAI's transcription format).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from ...core.errors import ApiError
from ...core.jobstate import ACTIVE, Status
from ...jobs.submit import accept_job
from .. import transcripts
from ..bodies import StrictRoute
from ..deps import App, Ctx, IdempotencyKey, Jobs, creates_job, only_form_fields
from ..errors import AUTHENTICATED, SYNC_JOB
from ..schemas import TEMPERATURE_HELP, TEMPERATURE_RANGE
from ..streaming import STREAM_HEADERS, job_error, sse, text_deltas
from .jobs import upload_size

router = APIRouter(
    prefix="/v1/audio", tags=["openai"], route_class=StrictRoute, responses=AUTHENTICATED
)
Format = Literal["json", "text", "srt", "vtt", "verbose_json"]


FIELDS = ("file", "model", "prompt", "language", "temperature", "response_format", "stream",
          "timestamp_granularities[]")  # fmt: skip


@router.post(
    "/transcriptions",
    responses={
        **SYNC_JOB,
        200: {
            "description": "The transcript in `response_format`; with `stream=true`, "
            "server-sent events",
            "content": {
                "application/json": {},
                "text/plain": {},
                "text/vtt": {},
                "text/event-stream": {},
            },
        },
    },
    dependencies=[Depends(only_form_fields(*FIELDS)), Depends(creates_job)],
)
async def transcriptions(
    ctx: Ctx,
    gw: App,
    who: Jobs,
    file: Annotated[UploadFile, File()],
    model: Annotated[str, Form(description="A model id from GET /v1/models.")],
    prompt: Annotated[str | None, Form(max_length=8000)] = None,
    language: Annotated[
        str | None, Form(max_length=32, description="The speech's language (ISO-639-1), a hint.")
    ] = None,
    temperature: Annotated[
        float, Form(description=TEMPERATURE_HELP, json_schema_extra=TEMPERATURE_RANGE)
    ] = 0.0,
    response_format: Annotated[Format, Form()] = "json",
    stream: Annotated[bool, Form()] = False,
    granularities: Annotated[
        list[str] | None,
        Form(
            alias="timestamp_granularities[]",
            description="`segment` (what verbose_json has); `word` is not supported.",
        ),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Transcribe audio; verbose_json, srt and vtt carry the model's time markers (verbose_json's
    `text` is the answer as the model wrote it, markers included; its segments are without)."""
    if set(granularities or []) - {"segment"}:
        raise ApiError(
            422,
            "unsupported_granularity",
            "timestamp_granularities supports `segment` only: the model's time markers are "
            "per segment, there are no word timestamps",
        )
    timed = response_format in ("verbose_json", "srt", "vtt")
    hint = f"The speech is in {language}." if language else None
    instruction = " ".join(p for p in (hint, prompt) if p) or None
    size = file.size if file.size is not None else upload_size(file)
    job, _ = await run_in_threadpool(
        accept_job,
        ctx,
        who,
        file.file,
        size,
        "transcribe_timestamps" if timed else "transcribe",
        instruction,
        model,
        None,
        temperature,
        "greedy",
        idempotency_key,
        ctx.settings.sync_max_audio_seconds,
    )
    if stream:
        return StreamingResponse(
            _deltas(ctx, gw, job.id, who),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )
    job = await _finished(ctx, gw, job.id, who)
    if job.status != Status.SUCCEEDED:
        error = job.error or {"code": "cancelled", "message": "the job was cancelled"}
        raise ApiError(502, error["code"], f"job {job.id}: {error['message']}")
    result = job.result or {}
    if response_format == "text":
        return PlainTextResponse(result.get("text") or "")
    if response_format == "json":
        return JSONResponse({"text": result.get("text") or ""})
    if response_format == "verbose_json":
        return JSONResponse(transcripts.verbose(result, job.audio_seconds, language))
    items = transcripts.cues(result, job.audio_seconds)
    body = transcripts.srt(items) if response_format == "srt" else transcripts.vtt(items)
    return PlainTextResponse(body, media_type="text/vtt" if response_format == "vtt" else None)


async def _deltas(ctx, gw, job_id: str, who):
    """OpenAI's transcription stream: `transcript.text.delta` events as the text grows, then
    `transcript.text.done` with the whole text (or an `error`), then `[DONE]`."""
    async for item in text_deltas(ctx, gw, job_id, who):
        if isinstance(item, str):
            yield sse({"type": "transcript.text.delta", "delta": item})
        elif item.status != Status.SUCCEEDED:
            yield sse({"error": job_error(item)})
        else:
            yield sse({"type": "transcript.text.done", "text": (item.result or {}).get("text", "")})
            yield sse("[DONE]")


async def _finished(ctx, gw, job_id: str, who):
    deadline = time.monotonic() + ctx.settings.sync_timeout_s
    async with gw.watch.watch(job_id) as changed:
        job = await run_in_threadpool(ctx.store.get_job, job_id, who.tenant)
        while job.status in ACTIVE:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ApiError(
                    504,
                    "sync_timeout",
                    f"job {job_id} is still running after {ctx.settings.sync_timeout_s:g} s; "
                    f"read it at /v1/jobs/{job_id}",
                )
            await changed(left)
            job = await run_in_threadpool(ctx.store.get_job, job_id, who.tenant)
    return job
