"""A job's answer as it grows, for the OpenAI-compatible streams (transcriptions, chat), and
the server-sent event stream of a job or a pipeline run (`event_stream`).

The generator publishes each segment's text about once a second (services.core.events); this
turns it into appended deltas and, at the end, the finished job. Deltas only ever append: if a
report does not extend what was sent (a clip split into parallel segments, whose joined text is
only known at the end), the rest comes with the job, and the final text is the result's either
way.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated

from fastapi import Header
from fastapi.concurrency import run_in_threadpool

from ..core.jobstate import ACTIVE
from ..core.jobstore import Job, Principal
from .watch import JobWatch

# Every stream the gateway sends: never cached, and never held back by a buffering proxy (nginx).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# The OpenAPI answer of an event-stream route.
SSE = {200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}}
# The header a reconnecting EventSource sends: where an `event_stream` resumes.
LastEventId = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        pattern=r"^\d+-\d+$",
        description="Resume after this event (what EventSource sends on reconnect).",
    ),
]


async def text_deltas(ctx, gw, job_id: str, who: Principal) -> AsyncIterator[str | Job]:
    """Yields str deltas, then the job (finished, or still running past MOSS_SYNC_TIMEOUT_S)."""
    sent, live, after = "", True, "0"
    deadline = time.monotonic() + ctx.settings.sync_timeout_s
    while True:
        events = await gw.watch.next_events(job_id, after)
        after = events[-1][0] if events else after
        for _, kind, data in events:
            if kind != "text" or not live:
                continue
            item = json.loads(data)
            if item["segment"] != 0:
                live = False
            elif item["text"].startswith(sent) and len(item["text"]) > len(sent):
                yield item["text"][len(sent) :]
                sent = item["text"]
        job = await run_in_threadpool(ctx.store.get_job, job_id, who.tenant)
        if job.status in ACTIVE and time.monotonic() < deadline:
            continue
        text = (job.result or {}).get("text") or ""
        if text.startswith(sent) and len(text) > len(sent):
            yield text[len(sent) :]
        yield job
        return


def sse(data: dict | str) -> str:
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {body}\n\n"


def job_error(job: Job) -> dict:
    """The error a synchronous request reports for a job that did not succeed."""
    if job.status in ACTIVE:
        return {"code": "sync_timeout", "message": f"job {job.id} is still running; read it at "
                f"/v1/jobs/{job.id}"}  # fmt: skip
    error = job.error or {"code": "cancelled", "message": "the job was cancelled"}
    return {**error, "message": f"job {job.id}: {error['message']}"}


async def event_stream(
    watch: JobWatch, key: str, after: str, read: Callable[[], Awaitable[tuple[bool, str]]]
) -> AsyncIterator[str]:
    """Server-sent events of a job or a pipeline run (`key`: where its events go): replay
    what the client missed after `after`, then follow. `read()` reads the resource from the
    store, the source of truth: (ended, its JSON); once it has ended a last `done` event
    carries it. A comment every 15 quiet seconds keeps proxies from closing the stream."""
    events = await watch.backlog(key, after)
    quiet = 0
    while True:
        for entry, kind, data in events:
            yield f"id: {entry}\nevent: {kind}\ndata: {data}\n\n"
            after = entry
        ended, body = await read()
        if ended:
            yield f"event: done\ndata: {body}\n\n"
            return
        events = await watch.next_events(key, after)
        quiet = 0 if events else quiet + 1
        if quiet and quiet % 15 == 0:
            yield ": keep-alive\n\n"  # proxies close silent connections
