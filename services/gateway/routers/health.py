"""Liveness, readiness (no authentication: probes call them) and Prometheus metrics."""

from __future__ import annotations

import time
from collections.abc import Callable

from fastapi import APIRouter, Response

from ...core.bootstrap import describe, read_status
from ...core.queue import QUEUES
from ..bodies import StrictRoute
from ..deps import Admin, App
from ..errors import AUTHENTICATED
from ..metrics import CONTENT_TYPE
from ..schemas import Health

router = APIRouter(tags=["health"], route_class=StrictRoute)  # /metrics alone takes a key


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process answers. No authentication."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(app: App, response: Response) -> Health:
    """Readiness: Redis, the database, the object store and a worker for every queue (and,
    on the local stack's first run, the model still being trained). No authentication (probes
    call it)."""
    checks = {
        "database": _check(app.context.store.ping),
        "storage": _check(app.context.storage.ping),
    }
    try:
        queues = app.live_queues()
        checks["redis"] = "ok"
        for queue in QUEUES:
            checks[f"workers.{queue}"] = "ok" if queue in queues else "no worker"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    if (training := read_status(app.context.settings.home)) is not None:
        # `mossctl up`'s first run: jobs are accepted and wait for the trained model.
        checks["model"] = describe(training)
    ready = all(v == "ok" for v in checks.values())
    response.status_code = 200 if ready else 503
    return Health(status="ok" if ready else "unavailable", checks=checks)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        **AUTHENTICATED,
        200: {"description": "Prometheus' text format", "content": {CONTENT_TYPE: {}}},
    },
)
def prometheus_metrics(app: App, _who: Admin) -> Response:
    """Prometheus metrics (admin keys only): HTTP traffic, jobs by status, queue depths, stage
    latency, generated tokens, audio seconds, webhook outcomes."""
    return Response(app.metrics.render(), media_type=CONTENT_TYPE)


def _check(probe: Callable[[], None]) -> str:
    started = time.monotonic()
    try:
        probe()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok" if time.monotonic() - started < 5 else "slow"
