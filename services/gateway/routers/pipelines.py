"""Pipelines: queue a run (admin), then follow it as a resource: its status and progress, its
events, its log, and cancel it.

A run belongs to the tenant of the key that made it. A tenant reads and cancels its own runs
(keys with `jobs` or `registry`); an admin sees every tenant's. Another tenant's run id answers
404 exactly like one that does not exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from ...core import lifecycle
from ...core.errors import ApiError
from ...core.jobstate import Status
from ...core.jobstore import IdempotencyConflict, Principal, RunStore
from ...core.jobstore.models import PipelineRun as RunRow
from ...core.jobstore.runs import event_key, log_chunk_key
from ...core.runstate import ACTIVE
from ...core.storage import ObjectNotFound, Storage
from ..bodies import StrictRoute
from ..deps import Admin, App, IdempotencyKey, RunReader
from ..errors import AUTHENTICATED, BODY, PARAMS, responses
from ..run_schemas import PipelineRunDetail, PipelineRunList
from ..schemas import PipelineRun, PipelineRunOut
from ..streaming import SSE, STREAM_HEADERS, LastEventId, event_stream

router = APIRouter(
    prefix="/v1/pipelines", tags=["pipelines"], route_class=StrictRoute, responses=AUTHENTICATED
)
MAX_OFFSET = 10**9
LOG_POLL_S = 1.0  # a followed log looks for its next chunk this often
TEXT = {200: {"content": {"text/plain": {}}, "description": "The run's output, as it was written"}}


@router.post(
    "/{name}/runs",
    status_code=202,
    response_model=PipelineRunOut,
    responses={**BODY, **responses(404, 409, 503)},
)
def run_pipeline(
    app: App,
    name: str,
    body: PipelineRun,
    who: Admin,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> dict:
    """Queue a run; the pipeline worker submits it to Kubeflow when configured, else runs it
    with kfp.local. Follow it at `url` (`Location`). With `Idempotency-Key`, a retry answers
    with the first run."""
    start = {"runs": app.runs, "tenant": who.tenant, "key_id": who.key_id}
    if idempotency_key is None:
        started = lifecycle.start_pipeline(
            app.settings, app.enqueue_pipeline, name, body.params, **start
        )
        response.headers["Location"] = started["url"]
        return started
    store, key = app.context.store, f"pipeline:{idempotency_key}"
    digest = hashlib.sha256(json.dumps([name, body.params], sort_keys=True).encode()).hexdigest()
    # nothing made or queued (`forget`): the key is forgotten, a retry may use it again
    started = lifecycle.start_pipeline(
        app.settings, app.enqueue_pipeline, name, body.params,
        before=lambda run_id: _remember(store, who, key, digest, run_id),
        forget=lambda: store.forget_idempotency(who.tenant, key), **start,
    )  # fmt: skip
    if started.get("replayed"):
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = started["url"]
    return started


def _remember(store, who, key: str, digest: str, run_id: str) -> str | None:
    """Record the key for this run; the first run's id when the key named one already."""
    try:
        store.remember_idempotency(who.tenant, key, digest, run_id)
        return None
    except IdempotencyConflict as exc:
        first = exc.first
    if first is None or first[0] != digest:
        raise ApiError(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used in the last 24 h for a different request; use a "
            "new key for a new run",
        )
    return first[1]


@router.get("/runs", response_model=PipelineRunList, responses=PARAMS)
def list_runs(
    app: App,
    who: RunReader,
    status: Annotated[Status | None, Query(description="Only the runs in this status.")] = None,
    tenant: Annotated[
        str | None,
        Query(max_length=128, description="An admin's filter: one tenant's runs (default: all)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> PipelineRunList:
    """The caller's runs, newest first (an admin's: every tenant's, or `tenant`'s)."""
    if who.can("admin"):
        rows, total = app.runs.list(tenant, status, limit, offset)
    elif tenant in (None, who.tenant):
        rows, total = app.runs.list(who.tenant, status, limit, offset)
    else:  # another tenant's runs are not there for this key
        rows, total = [], 0
    runs = [PipelineRunDetail.of(run) for run in rows]
    return PipelineRunList(runs=runs, total=total, limit=limit, offset=offset)


@router.get(
    "/runs/{run_id}", response_model=PipelineRunDetail, responses={**PARAMS, **responses(404)}
)
def get_run(app: App, run_id: str, who: RunReader) -> PipelineRunDetail:
    """The run: status, the pipeline step and training progress (step, loss, lr, ETA), what
    it made (MLflow run, model, version, the gate's decision) or why it failed."""
    return PipelineRunDetail.of(own_run(app.runs, run_id, who))


@router.delete(
    "/runs/{run_id}", response_model=PipelineRunDetail, responses={**PARAMS, **responses(404, 409)}
)
def cancel_run(app: App, run_id: str, who: RunReader) -> PipelineRunDetail:
    """Cancel a run: a queued one at once; a running one is stopped by its pipeline worker
    (the kfp.local process group, or the Kubeflow run) and then reads `cancelled`. A run
    that has ended is 409 `run_finished`."""
    run = own_run(app.runs, run_id, who)
    if run.status not in ACTIVE or not app.runs.request_cancel(run_id):
        raise ApiError(409, "run_finished", f"the run has already ended ({run.status})")
    return PipelineRunDetail.of(app.runs.get(run_id))


@router.get(
    "/runs/{run_id}/events",
    responses={**PARAMS, **responses(404), **SSE},
    response_class=StreamingResponse,
)
async def run_events(
    app: App,
    run_id: str,
    who: RunReader,
    last_event_id: LastEventId = None,
) -> StreamingResponse:
    """The run's events as server-sent events: `change` (status, progress, results), and a
    last `done` with the whole run; each event's `id` resumes the stream after it."""
    run = await run_in_threadpool(own_run, app.runs, run_id, who)  # 404 before any byte

    async def read() -> tuple[bool, str]:
        current = await run_in_threadpool(own_run, app.runs, run.id, who)
        return current.status not in ACTIVE, PipelineRunDetail.of(current).model_dump_json()

    return StreamingResponse(
        event_stream(app.watch, event_key(run.id), last_event_id or "0", read),
        media_type="text/event-stream",
        headers=STREAM_HEADERS,
    )


@router.get(
    "/runs/{run_id}/log",
    responses={**PARAMS, **responses(404), **TEXT},
    response_class=StreamingResponse,
)
async def run_log(
    app: App,
    run_id: str,
    who: RunReader,
    follow: Annotated[
        bool, Query(description="Keep streaming as the run writes, until it ends (`tail -f`).")
    ] = False,
) -> StreamingResponse:
    """The run's output (every step's log lines and progress lines), from the object store,
    wherever the pipeline worker ran it."""
    run = await run_in_threadpool(own_run, app.runs, run_id, who)
    return StreamingResponse(
        _log(app.context.storage, app.runs, run, who, follow),
        media_type="text/plain; charset=utf-8",
        headers=STREAM_HEADERS,
    )


async def _log(storage: Storage, runs: RunStore, run: RunRow, who: Principal, follow: bool):
    """Chunks in order; following, wait for the next until the run has ended. The worker writes
    its last chunk before it ends the run, so once it has ended, the chunks there are all."""
    number, ended = 0, run.status not in ACTIVE or not follow
    while True:
        chunk = await run_in_threadpool(_chunk, storage, run.log_key, number)
        if chunk is not None:
            yield chunk
            number += 1
            continue
        if ended:
            return
        await asyncio.sleep(LOG_POLL_S)
        current = await run_in_threadpool(own_run, runs, run.id, who)
        ended = current.status not in ACTIVE  # one more look for chunks, then stop


def _chunk(storage: Storage, folder: str, number: int) -> bytes | None:
    try:
        return storage.get_bytes(log_chunk_key(folder, number))
    except ObjectNotFound:
        return None


def own_run(runs: RunStore, run_id: str, who: Principal) -> RunRow:
    """The run, if the caller may see it (an admin: any); 404 otherwise, the same for another
    tenant's run as for one that does not exist."""
    run = runs.get(run_id, tenant=None if who.can("admin") else who.tenant)
    if run is None:
        raise ApiError(404, "not_found", "no such pipeline run")
    return run
