"""Celery workers: thin tasks over services.jobs, one process per queue.

    celery -A services.worker worker -Q encode -P threads -c 4    # the encoder
    celery -A services.worker worker -Q generate -P threads -c 8  # the generator

The threads each hold a job; with the local backend the encoder's feed one encode batcher per
model (the clips waiting together are one encoder pass) and the generator's one
continuous-batching engine per model, so concurrent jobs share forward passes (models load
once per process and stay); with the kserve backend they call the predictors
(MOSS_INFERENCE_BACKEND).
"""

from __future__ import annotations

import functools
import logging
import threading

from celery.exceptions import Retry
from celery.signals import setup_logging, worker_init, worker_ready
from minio.error import S3Error
from sqlalchemy.exc import OperationalError
from urllib3.exceptions import HTTPError as Urllib3Error

from .core import tracing
from .core.events import events_for
from .core.jobmetrics import JobMetrics
from .core.jobstore import JobStore
from .core.logs import JOB_ID, configure
from .core.patience import Patient, patiently
from .core.queue import enqueuer, make_celery
from .core.settings import get_settings
from .core.storage import make_storage
from .inference import make_backend
from .jobs.context import Context
from .jobs.stages import encode_job, generate_job
from .jobs.sweeper import recover_own

log = logging.getLogger("moss.worker")
settings = get_settings()
app = make_celery(settings)


@setup_logging.connect
def _logs(**_) -> None:
    """Our log lines instead of Celery's own setup: the job id on each (core.logs)."""
    configure(settings.log_format)


_node: dict[str, str] = {}  # this process's Celery node name, once the worker starts


@worker_init.connect
def _tracing(sender=None, **_) -> None:
    if sender is not None:
        _node["name"] = sender.hostname
    tracing.setup("moss-worker", settings)


@worker_ready.connect
def _recover(**_) -> None:
    """Give back, at once, what this node name held when its previous process died: the stages
    go back on the queue now, not when the sweeper finds their heartbeat stale (minutes)."""
    try:
        for job_id, stage in recover_own(context()):
            log.warning("re-enqueued %s of job %s (this worker's previous process died)",
                        stage, job_id)  # fmt: skip
    except Exception:  # the store is away: the sweeper will do it
        log.warning("could not recover this worker's orphaned stages", exc_info=True)


# Failures worth retrying the task for: the database, the object store or the network away for
# longer than the store's and the storage's own patience (core.patience).
TRANSIENT = (OperationalError, S3Error, ConnectionError, TimeoutError, Urllib3Error)


_context_lock = threading.Lock()


def context() -> Context:
    """The worker's one context, made by the first task. A lock, not just a cache: the pool's
    threads take their first tasks at once, and two migrations in one process collide (Alembic
    keeps its context in module globals)."""
    with _context_lock:
        return _make_context()


@functools.cache
def _make_context() -> Context:
    # A worker restarted while the database or the object store is away waits for them here,
    # in its first task, rather than failing that task (its message would be gone).
    patience = settings.dependency_retry_s
    store = patiently(
        lambda: JobStore.connect(
            settings.resolved_database_url, events=events_for(settings.redis_url)
        ),
        patience,
        "connecting to the job store",
    )
    storage = patiently(lambda: make_storage(settings), patience, "connecting to the object store")
    return Context(
        settings=settings,
        store=Patient(store, patience),  # type: ignore[arg-type]  # a JobStore, retried
        storage=Patient(storage, patience),  # type: ignore[arg-type]
        enqueue=enqueuer(app, priority_of=store.priority_of),
        backend=make_backend(settings),
        metrics=JobMetrics(settings.redis_url),
        worker=_node.get("name"),
    )


def _run(task, stage: str, job_id: str, work) -> None:
    token = JOB_ID.set(job_id)  # every line logged while the stage runs names the job
    tracing.annotate(job_id=job_id, stage=stage)
    try:
        _run_stage(task, stage, job_id, work)
    finally:
        JOB_ID.reset(token)


def _run_stage(task, stage: str, job_id: str, work) -> None:
    try:
        ctx = context()
    except TRANSIENT as exc:  # still away after MOSS_DEPENDENCY_RETRY_S: the task, later
        raise task.retry(exc=exc, countdown=30) from exc
    try:
        work(ctx)  # a stage that finishes enqueues the next one itself (core.jobstate.advance)
    except Retry:
        raise
    except TRANSIENT as exc:
        ctx.store.release_stage(job_id, stage)
        if task.request.retries >= ctx.settings.task_max_retries:
            ctx.store.fail(job_id, f"{stage}_failed", f"gave up after retries: {exc}")
            return
        raise task.retry(exc=exc, countdown=min(30, 2**task.request.retries)) from exc
    except Exception as exc:
        log.exception("%s failed for job %s", stage, job_id)
        ctx.store.fail(job_id, f"{stage}_failed", f"{type(exc).__name__}: {exc}")


@app.task(name="moss.encode", bind=True, max_retries=None)
def encode(self, job_id: str) -> None:
    _run(self, "encode", job_id, lambda ctx: encode_job(ctx, job_id))


@app.task(name="moss.generate", bind=True, max_retries=None)
def generate(self, job_id: str) -> None:
    _run(self, "generate", job_id, lambda ctx: generate_job(ctx, job_id))


@app.task(name="moss.annotate", bind=True, max_retries=None)
def annotate(self, job_id: str) -> None:
    from .jobs.annotate import annotate_job  # the engine (VAD, librosa) loads in this worker only

    _run(self, "annotate", job_id, lambda ctx: annotate_job(ctx, job_id))
