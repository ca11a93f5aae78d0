"""A job's outputs in other forms: its transcript as text, srt, vtt or verbose_json (the formats
of the OpenAI-compatible route, from the same code), and its audio back (the web page draws and
plays it). Tenant-scoped like every job route: another tenant's job is 404."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from ...core.errors import ApiError
from ...core.jobstate import Status
from ...core.storage import ObjectNotFound
from .. import transcripts
from ..bodies import StrictRoute
from ..deps import Ctx, Jobs
from ..errors import AUTHENTICATED, PARAMS, responses
from .jobs import own_job

router = APIRouter(
    prefix="/v1/jobs", tags=["jobs"], route_class=StrictRoute, responses=AUTHENTICATED
)


@router.get(
    "/{job_id}/transcript",
    responses={
        **PARAMS,
        **responses(404, 409),
        200: {
            "description": "The transcript (`text`, `srt` and `vtt` as text)",
            "content": {"application/json": {}, "text/plain": {}, "text/vtt": {}},
        },
    },
)
def transcript(
    ctx: Ctx,
    job_id: str,
    who: Jobs,
    format: Annotated[
        Literal["text", "srt", "vtt", "verbose_json"], Query(description="The transcript's form.")
    ] = "verbose_json",
) -> Response:
    """The finished job's answer as a transcript: `verbose_json` (segments with start and end,
    from the time markers; a text without markers is one segment over the whole clip), `srt`,
    `vtt` or `text`."""
    job = own_job(ctx.store, job_id, who)
    if job.status != Status.SUCCEEDED or job.result is None:
        state = "purged" if job.purged_at else str(job.status)
        raise ApiError(409, "no_result", f"the job has no result to show ({state})")
    if format == "text":
        return PlainTextResponse(job.result.get("text") or "")
    if format == "verbose_json":
        return JSONResponse(transcripts.verbose(job.result, job.audio_seconds, None))
    items = transcripts.cues(job.result, job.audio_seconds)
    if format == "srt":
        return PlainTextResponse(transcripts.srt(items))
    return PlainTextResponse(transcripts.vtt(items), media_type="text/vtt")


@router.get(
    "/{job_id}/audio",
    responses={
        **PARAMS,
        **responses(404),
        200: {"description": "The audio's bytes", "content": {"application/octet-stream": {}}},
    },
    response_class=Response,
)
def audio(ctx: Ctx, job_id: str, who: Jobs) -> Response:
    """The audio as it was uploaded (404 `not_found` once purged)."""
    job = own_job(ctx.store, job_id, who)
    try:
        data = ctx.storage.get_bytes(job.audio_key)
    except ObjectNotFound:
        raise ApiError(404, "not_found", "the job's audio was purged") from None
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"},
    )
