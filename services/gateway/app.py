"""The gateway app: wiring only (routers, middleware, error handlers, the sweeper).

Routes live in `routers/` (one per resource), what they depend on in `deps.py`, the job
functions they call in services.jobs. The gateway never loads torch: uploads are probed in a
child process and models are only named here, never loaded.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from ..core import tracing
from ..core.events import events_for
from ..core.jobstore import JobStore, RunStore
from ..core.queue import (
    QUEUES,
    PipelineEnqueue,
    enqueuer,
    live_workers,
    make_celery,
    pipeline_enqueuer,
    queue_depth,
    queues_with_workers,
)
from ..core.settings import Settings, get_settings
from ..core.storage import make_storage
from ..jobs import sweeper
from ..jobs.context import Context
from . import docs, errors, unavailable, webhooks, webui
from .admission import Admission
from .deps import Gateway
from .limits import BodySizeLimit
from .metrics import Metrics, MetricsMiddleware
from .overload import Overload
from .requestid import RequestId
from .routers import (
    annotations,
    datasets,
    health,
    job_outputs,
    jobs,
    keys,
    models,
    openai_audio,
    openai_chat,
    pipelines,
    registry,
)
from .watch import JobWatch


def build_context(settings: Settings) -> tuple[Context, Callable[[], set[str]], PipelineEnqueue]:
    """The real collaborators: the job store, the object store and the queue."""
    celery = make_celery(settings)
    broker = redis.Redis.from_url(settings.redis_url or "redis://127.0.0.1:6379/0")
    store = JobStore.connect(settings.resolved_database_url, events=events_for(settings.redis_url))
    ctx = Context(
        settings=settings,
        store=store,
        storage=make_storage(settings),
        enqueue=enqueuer(celery, priority_of=store.priority_of),
        live_workers=lambda: live_workers(celery),
        queue_depth=lambda queue: queue_depth(broker, queue),
        enqueue_pipeline=pipeline_enqueuer(celery),
    )
    return ctx, lambda: queues_with_workers(celery), ctx.enqueue_pipeline


def create_app(
    settings: Settings | None = None,
    context: Context | None = None,
    worker_queues: Callable[[], set[str]] | None = None,
    run_sweeper: bool = True,
    enqueue_pipeline: PipelineEnqueue | None = None,
    deliver_webhooks: bool | None = None,  # default: as run_sweeper
) -> FastAPI:
    settings = settings or get_settings()
    if context is None:
        context, worker_queues, enqueue_pipeline = build_context(settings)
    if enqueue_pipeline is None:
        enqueue_pipeline = pipeline_enqueuer(make_celery(settings))
    state = Gateway(
        context=context,
        live_queues=worker_queues or (lambda: set(QUEUES)),
        enqueue_pipeline=enqueue_pipeline,
        metrics=Metrics(context.store, settings.redis_url),
        watch=JobWatch(settings.redis_url),
        admission=Admission(settings, context.store),
        runs=RunStore.of(context.store),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        stop = threading.Event()
        thread = threading.Thread(
            target=sweeper.run_sweeper, args=(context, stop), name="sweeper", daemon=True
        )
        sender = threading.Thread(
            target=webhooks.run_webhooks,
            args=(context, stop, state.metrics.webhook_outcome),
            name="webhooks",
            daemon=True,
        )
        if run_sweeper:
            thread.start()
        if run_sweeper if deliver_webhooks is None else deliver_webhooks:
            sender.start()
        yield
        stop.set()
        await state.watch.close()

    app = FastAPI(
        title="MOSS-Audio platform",
        version="0.1.0",
        description="Submit audio jobs and read their results. Authenticate with "
        "`Authorization: Bearer <api key>`.",
        lifespan=lifespan,
        docs_url=None,  # served from local assets (docs.py)
        redoc_url=None,
    )
    app.state.gateway = state
    app.add_middleware(
        BodySizeLimit,
        max_bytes=settings.max_upload_bytes + 1024 * 1024,
        idle_timeout_s=settings.body_idle_timeout_s,
        paths={registry.IMPORT_PATH: settings.import_max_bytes + 1024 * 1024},
    )
    app.add_middleware(
        Overload,
        max_inflight=settings.gateway_max_inflight,
        max_waiting=settings.gateway_max_waiting,
        queue_wait_s=settings.gateway_queue_wait_s,
    )
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    app.add_middleware(RequestId)  # outermost: every response, errors included, gets the id
    errors.install(app)
    unavailable.install(app)
    if tracing.setup("moss-gateway", settings):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    docs.install(app)
    webui.install(app)
    routers = (
        health,
        jobs,
        job_outputs,
        keys,
        models,
        registry,
        pipelines,
        datasets,
        annotations,
        openai_audio,
        openai_chat,
    )
    for router in routers:
        app.include_router(router.router)
    return app
