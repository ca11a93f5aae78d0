"""`POST /v1/chat/completions` with `input_audio`, as OpenAI's client sends it, on the job
machinery: one user message with one audio clip (and text) becomes a `chat` job (durable, the
caller's tenant, listed in `GET /v1/jobs`); the answer comes when the job ends, or as
`chat.completion.chunk` events with `stream=true`. Thinking models' reasoning comes apart, as
`reasoning_content`.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from model.sampling import MAX_NEW_TOKENS

from ...core.errors import ApiError
from ...core.jobstate import Status
from ...core.jobstore import Job
from ...jobs.submit import accept_job
from ..bodies import StrictRoute
from ..deps import App, Ctx, IdempotencyKey, Jobs, creates_job
from ..errors import AUTHENTICATED, SYNC_JOB
from ..schemas import TEMPERATURE_HELP, TEMPERATURE_RANGE
from ..streaming import STREAM_HEADERS, job_error, sse, text_deltas

router = APIRouter(
    prefix="/v1/chat", tags=["openai"], route_class=StrictRoute, responses=AUTHENTICATED
)


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """The fields we serve; any other is refused (422), never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[dict[str, Any]] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_NEW_TOKENS)
    temperature: float | None = Field(
        default=None, description=TEMPERATURE_HELP, json_schema_extra=TEMPERATURE_RANGE
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    user: str | None = None
    # vLLM's prefix-cache isolation field, accepted so that a client written for vLLM works
    # here; the platform already keeps each tenant's caches apart (MOSS_SHARED_CACHE).
    cache_salt: str | None = Field(default=None, max_length=256)


def _conversation(messages: list[dict[str, Any]], max_bytes: int) -> tuple[str, bytes]:
    """(instruction, audio bytes) of one user turn (system text first) with one clip."""
    texts, clips = [], []
    users = [m for m in messages if m.get("role") == "user"]
    if len(users) != 1 or any(m.get("role") not in ("user", "system") for m in messages):
        raise ApiError(
            422,
            "unsupported_conversation",
            "send one user message (optionally after system messages) holding the audio; "
            "multi-turn conversations are not served",
        )
    for message in messages:
        content = message.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list | None) or not all(isinstance(p, dict) for p in parts or []):
            raise ApiError(
                422, "unsupported_content", "content must be a string or a list of parts"
            )
        for part in parts or []:
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "input_audio" and message["role"] == "user":
                clips.append(part.get("input_audio") or {})
            else:
                raise ApiError(422, "unsupported_content", f"unsupported part {part.get('type')!r}")
    if len(clips) != 1:
        raise ApiError(422, "audio_required", "the user message needs exactly one input_audio part")
    data = clips[0].get("data") if isinstance(clips[0], dict) else None
    if not isinstance(data, str):
        raise ApiError(422, "invalid_audio_data", "input_audio.data must be a base64 string")
    if len(data) > max_bytes * 4 // 3 + 4:
        raise ApiError(413, "upload_too_large", "the audio is larger than MOSS_MAX_UPLOAD_MB")
    try:
        audio = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(422, "invalid_audio_data", "input_audio.data is not base64") from exc
    return "\n".join(t for t in texts if t.strip()), audio


@router.post(
    "/completions",
    responses={
        **SYNC_JOB,
        200: {
            "description": "A `chat.completion`; with `stream=true`, `chat.completion.chunk` "
            "server-sent events",
            "content": {"application/json": {}, "text/event-stream": {}},
        },
    },
    dependencies=[Depends(creates_job)],
)
async def completions(
    ctx: Ctx, gw: App, who: Jobs, body: ChatRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    """A chat completion about one audio clip. With `Idempotency-Key`, a retry answers from the
    first request's job instead of making another."""
    instruction, audio = _conversation(body.messages, ctx.settings.max_upload_bytes)
    job, _ = await run_in_threadpool(
        accept_job,
        ctx,
        who,
        io.BytesIO(audio),
        len(audio),
        "chat",
        instruction or "Describe the audio.",
        body.model,
        body.max_completion_tokens or body.max_tokens,
        body.temperature or 0.0,
        "greedy",
        idempotency_key,
        ctx.settings.sync_max_audio_seconds,
    )
    ident, created = f"chatcmpl-{job.id}", int(time.time())
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            _chunks(ctx, gw, job, who, ident, created, body.model, usage),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )
    async for item in text_deltas(ctx, gw, job.id, who):
        if isinstance(item, Job):
            job = item
    if job.status != Status.SUCCEEDED:
        error = job_error(job)
        raise ApiError(
            504 if error["code"] == "sync_timeout" else 502, error["code"], error["message"]
        )
    result = job.result or {}
    message: dict[str, Any] = {"role": "assistant", "content": result.get("text", "")}
    if result.get("thinking"):
        message["reasoning_content"] = result["thinking"]
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": result.get("finish_reason")}
            ],
            "usage": _usage(result),
        }
    )


def _usage(result: dict) -> dict[str, int]:
    usage = result.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0}
    return {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}


async def _chunks(ctx, gw, job: Job, who, ident: str, created: int, model: str, usage: bool):
    def chunk(delta: dict, finish: str | None = None, **extra) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return sse({"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [choice], **extra})  # fmt: skip

    yield chunk({"role": "assistant", "content": ""})
    async for item in text_deltas(ctx, gw, job.id, who):
        if isinstance(item, str):
            yield chunk({"content": item})
            continue
        if item.status != Status.SUCCEEDED:
            yield sse({"error": job_error(item)})
            return
        result = item.result or {}
        if result.get("thinking"):
            yield chunk({"reasoning_content": result["thinking"]})
        yield chunk({}, result.get("finish_reason") or "stop")
        if usage:
            yield sse({"id": ident, "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": [], "usage": _usage(result)})  # fmt: skip
        yield sse("[DONE]")
