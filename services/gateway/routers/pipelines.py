"""Pipelines (admin): queue a run of `pretrain`, `sft` or `evaluate` for the pipeline worker."""

from __future__ import annotations

import hashlib
import json

from fastapi import APIRouter, Response

from ...core import lifecycle
from ...core.errors import ApiError
from ...core.jobstore import IdempotencyConflict
from ..bodies import StrictRoute
from ..deps import Admin, App, IdempotencyKey
from ..errors import AUTHENTICATED, BODY, responses
from ..schemas import PipelineRun, PipelineRunOut

router = APIRouter(
    prefix="/v1/pipelines", tags=["pipelines"], route_class=StrictRoute, responses=AUTHENTICATED
)


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
    with kfp.local. With `Idempotency-Key`, a retry answers with the first run."""
    if idempotency_key is None:
        return lifecycle.start_pipeline(app.settings, app.enqueue_pipeline, name, body.params)
    store, key = app.context.store, f"pipeline:{idempotency_key}"
    digest = hashlib.sha256(json.dumps([name, body.params], sort_keys=True).encode()).hexdigest()
    try:
        started = lifecycle.start_pipeline(
            app.settings, app.enqueue_pipeline, name, body.params,
            before=lambda run_id: _remember(store, who, key, digest, run_id),
        )  # fmt: skip
    except ApiError as exc:
        if exc.code == "queue_unavailable":  # nothing was queued: the key may be used again
            store.forget_idempotency(who.tenant, key)
        raise
    if started.get("replayed"):
        response.headers["Idempotent-Replayed"] = "true"
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
