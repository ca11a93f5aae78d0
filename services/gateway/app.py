"""The gateway app: thin routes over services.jobs, API-key auth, JSON errors, a sweeper.

Every route but /healthz needs `Authorization: Bearer <key>`; a tenant only ever sees its own
jobs (another tenant's job is 404, not 403, so ids leak nothing). Errors are
`{"error": {"code", "message"}}` with a 4xx/5xx status.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import lifecycle
from ..errors import ApiError
from ..jobs import TASKS, Context, submit_job, sweep
from ..jobstore import ACTIVE, JobStore, Principal
from ..queue import QUEUES, enqueuer, make_celery, queues_with_workers
from ..settings import Settings, get_settings
from ..storage import make_storage
from .limits import BodySizeLimit
from .metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from .schemas import (
    AliasMove,
    ErrorBody,
    Health,
    JobList,
    JobOut,
    KeyCreate,
    KeyCreated,
    KeyOut,
    PipelineRun,
    Rollback,
    key_out,
)

log = logging.getLogger("moss.gateway")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
LONG_POLL_STEP_S = 0.02  # a primary-key read: far cheaper than a client's HTTP round trip
ERRORS = {401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 422: {"model": ErrorBody}}


def principal(scope: str) -> Callable[[Request], Principal]:
    """A dependency: the caller's key, which must carry `scope` (or `admin`)."""

    def dependency(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "send `Authorization: Bearer <api key>`")
        found = request.app.state.context.store.authenticate(key.strip())
        if found is None:
            raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
        if not found.can(scope):
            raise ApiError(403, "forbidden", f"the API key lacks the {scope!r} scope")
        return found

    return dependency


Jobs = Annotated[Principal, Depends(principal("jobs"))]
Admin = Annotated[Principal, Depends(principal("admin"))]


def build_context(settings: Settings) -> tuple[Context, Callable[[], set[str]]]:
    celery = make_celery(settings)
    ctx = Context(
        settings=settings,
        store=JobStore.connect(settings.resolved_database_url),
        storage=make_storage(settings),
        enqueue=enqueuer(celery),
    )
    return ctx, lambda: queues_with_workers(celery)


def _sweeper(ctx: Context, stop: threading.Event) -> None:
    interval = max(1.0, ctx.settings.sweep_after_s / 4)
    while not stop.wait(interval):
        try:
            for job_id, stage in sweep(ctx):
                log.warning("re-enqueued %s of job %s (worker lost or message lost)", stage, job_id)
        except Exception:
            log.exception("sweep failed")


def create_app(
    settings: Settings | None = None,
    context: Context | None = None,
    worker_queues: Callable[[], set[str]] | None = None,
    run_sweeper: bool = True,
) -> FastAPI:
    settings = settings or get_settings()
    if context is None:
        context, worker_queues = build_context(settings)
    ctx = context
    live_queues = worker_queues or (lambda: set(QUEUES))

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        stop = threading.Event()
        thread = threading.Thread(target=_sweeper, args=(ctx, stop), name="sweeper", daemon=True)
        if run_sweeper:
            thread.start()
        yield
        stop.set()

    app = FastAPI(
        title="MOSS-Audio platform",
        version="0.1.0",
        description="Submit audio jobs and read their results. Authenticate with "
        "`Authorization: Bearer <api key>`.",
        lifespan=lifespan,
    )
    app.state.context = ctx
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes + 1024 * 1024)
    metrics = Metrics(ctx.store)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", []) if p not in ("body", "query"))
        return _error(422, "invalid_request", f"{where}: {first.get('msg')}".strip(": "))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return _error(500, "internal_error", "an internal error occurred; it has been logged")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    # --- health ---------------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        """Liveness: the process answers. No authentication."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def readyz(response: Response) -> Health:
        """Readiness: Redis, the database, the object store and a worker for every queue.
        No authentication (probes call it)."""
        checks = {
            "database": _check(ctx.store.ping),
            "storage": _check(ctx.storage.ping),
        }
        try:
            queues = live_queues()
            checks["redis"] = "ok"
            for queue in QUEUES:
                checks[f"workers.{queue}"] = "ok" if queue in queues else "no worker"
        except Exception as exc:
            checks["redis"] = f"error: {type(exc).__name__}"
        ready = all(v == "ok" for v in checks.values())
        response.status_code = 200 if ready else 503
        return Health(status="ok" if ready else "unavailable", checks=checks)

    @app.get("/metrics", tags=["health"], response_class=Response, responses=ERRORS)
    def prometheus_metrics(_who: Admin) -> Response:
        """Prometheus metrics (admin keys only): HTTP traffic and jobs by status."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # --- jobs -----------------------------------------------------------------------------

    @app.post(
        "/v1/jobs",
        status_code=202,
        response_model=JobOut,
        tags=["jobs"],
        responses={**ERRORS, 413: {"model": ErrorBody}, 415: {"model": ErrorBody}},
    )
    def create_job(
        who: Jobs,
        response: Response,
        file: Annotated[UploadFile, File(description="The audio (wav, flac, ogg, mp3, m4a...).")],
        task: Annotated[str, Form(description=f"One of {', '.join(TASKS)}.")],
        prompt: Annotated[str | None, Form(max_length=8000)] = None,
        model: Annotated[str | None, Form(description="`name` or `name@alias`.")] = None,
        max_new_tokens: Annotated[int | None, Form()] = None,
        temperature: Annotated[float, Form()] = 0.0,
        sampling: Annotated[
            str,
            Form(
                description="`greedy` (default; `temperature` applies) or `model`: the "
                "checkpoint's own generation_config.json (the release: sampling, "
                "temperature 1.0, top_p 1.0, top_k 50)."
            ),
        ] = "greedy",
    ) -> JobOut:
        """Submit audio. Answers 202 with the job; poll `Location` for the result."""
        size = file.size if file.size is not None else _size(file)
        job = submit_job(
            ctx, who, file.file, size, task, prompt, model, max_new_tokens, temperature, sampling
        )
        response.headers["Location"] = f"/v1/jobs/{job.id}"
        return JobOut.of(job)

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=ERRORS)
    async def get_job(
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
        job = await run_in_threadpool(_own, ctx.store, job_id, who)
        while job.status in ACTIVE and time.monotonic() < deadline:
            await asyncio.sleep(LONG_POLL_STEP_S)
            job = await run_in_threadpool(_own, ctx.store, job_id, who)
        return JobOut.of(job)

    @app.get("/v1/jobs", response_model=JobList, tags=["jobs"], responses=ERRORS)
    def list_jobs(
        who: Jobs,
        status: Annotated[str | None, Query(description=" | ".join(STATUSES))] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JobList:
        """The caller's jobs, newest first."""
        if status is not None and status not in STATUSES:
            raise ApiError(422, "invalid_status", f"status must be one of {', '.join(STATUSES)}")
        rows, total = ctx.store.list_jobs(who.tenant, status, limit, offset)
        return JobList(jobs=[JobOut.of(r) for r in rows], total=total, limit=limit, offset=offset)

    @app.delete(
        "/v1/jobs/{job_id}",
        response_model=JobOut,
        tags=["jobs"],
        responses={**ERRORS, 409: {"model": ErrorBody}},
    )
    def cancel_job(job_id: str, who: Jobs) -> JobOut:
        """Cancel a queued or running job; a running one stops at its next decoding step."""
        job = _own(ctx.store, job_id, who)
        if job.status not in ACTIVE or not ctx.store.request_cancel(job_id):
            raise ApiError(409, "job_finished", f"the job has already ended ({job.status})")
        return JobOut.of(ctx.store.get_job(job_id))

    # --- models and pipelines ----------------------------------------------------------------

    @app.get("/v1/models", tags=["models"], responses=ERRORS)
    def list_models(_: Jobs) -> list[dict]:
        """Registered models with their versions, aliases and evaluation metrics."""
        return lifecycle.list_models(settings)

    @app.post(
        "/v1/models/{name}/aliases/{alias}",
        tags=["models"],
        responses={**ERRORS, 409: {"model": ErrorBody}},
    )
    def move_alias(name: str, alias: str, body: AliasMove, who: Admin) -> dict:
        """Point `alias` at a version if it passes the promotion gate (409 when refused)."""
        actor = f"{who.tenant}:{who.key_id[:8]}"
        return lifecycle.promote(settings, name, alias, body.version, actor, body.force)

    @app.post("/v1/models/{name}/rollback", tags=["models"], responses=ERRORS)
    def rollback(name: str, body: Rollback, who: Admin) -> dict:
        """Move an alias (default `production`) back to its previous version."""
        version = lifecycle.rollback(settings, name, body.alias, f"{who.tenant}:{who.key_id[:8]}")
        return {"name": name, "alias": body.alias, "version": version}

    @app.post("/v1/pipelines/{name}/runs", status_code=202, tags=["pipelines"], responses=ERRORS)
    def run_pipeline(name: str, body: PipelineRun, _: Admin) -> dict:
        """Start `pretrain`, `sft` or `evaluate` (on Kubeflow when configured, else locally)."""
        return lifecycle.start_pipeline(settings, name, body.params)

    # --- keys -----------------------------------------------------------------------------

    @app.post("/v1/keys", status_code=201, response_model=KeyCreated, tags=["keys"])
    def create_key(body: KeyCreate, _: Admin) -> KeyCreated:
        plain, record = ctx.store.create_key(body.tenant, list(body.scopes), body.name)
        return KeyCreated(**key_out(record, key=plain))

    @app.get("/v1/keys", response_model=list[KeyOut], tags=["keys"])
    def list_keys(_: Admin) -> list[KeyOut]:
        return [KeyOut(**key_out(r)) for r in ctx.store.list_keys()]

    @app.delete("/v1/keys/{key_id}", status_code=204, tags=["keys"], responses=ERRORS)
    def revoke_key(key_id: str, _: Admin) -> Response:
        if not ctx.store.revoke_key(key_id):
            raise ApiError(404, "not_found", "no such key")
        return Response(status_code=204)

    return app


def _own(store: JobStore, job_id: str, who: Principal):
    job = store.get_job(job_id, tenant=who.tenant)
    if job is None:
        raise ApiError(404, "not_found", "no such job")
    return job


def _size(upload: UploadFile) -> int:
    upload.file.seek(0, 2)
    size = upload.file.tell()
    upload.file.seek(0)
    return size


def _check(probe: Callable[[], None]) -> str:
    started = time.monotonic()
    try:
        probe()
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "ok" if time.monotonic() - started < 5 else "slow"


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)
