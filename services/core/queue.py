"""The Celery app on Redis/Valkey (`MOSS_REDIS_URL`): the job queues `encode` and `generate`,
`annotate` for annotation jobs, and `pipelines`, where the gateway leaves pipeline runs for the
pipeline worker.

Tasks are acknowledged late and rejected when their worker dies, so Redis delivers them again;
the job store's stage claims make every redelivery harmless. The visibility timeout is above
the task time limit, so a slow task is not delivered twice while it still runs (celery#5935).

A job with `priority: high` goes through queues of its own (`encode.high`, `generate.high`).
Workers consume both and empty the high one first (kombu's `priority` queue order), so a high
job waits for no normal one queued before it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

from celery import Celery

from .jobstate import TASK_STAGES
from .settings import Settings

QUEUES = tuple(str(stage) for stage in TASK_STAGES)  # the job path: readiness needs both
PRIORITIES = ("normal", "high")
HIGH = ".high"  # encode.high, generate.high
ANNOTATE_QUEUE = "annotate"  # annotation jobs: the annotate worker (docs/annotation.md)
TASK_NAMES = {"encode": "moss.encode", "generate": "moss.generate", "annotate": "moss.annotate"}
PIPELINE_QUEUE = "pipelines"
PIPELINE_TASK = "moss.pipeline"
# pipelines.kfp_pipelines defines each; `import` is what POST /v1/registry/models/import queues.
PIPELINE_NAMES = ("pretrain", "sft", "evaluate", "annotate", "import")
CPU_ONLY_PIPELINES = ("import",)  # compiled without a `-gpu` variant: they run no model
PipelineEnqueue = Callable[[str, str, dict[str, Any]], None]  # (run id, pipeline, params)


def make_celery(settings: Settings) -> Celery:
    app = Celery("moss", broker=settings.redis_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_routes={
            **{name: {"queue": queue} for queue, name in TASK_NAMES.items()},
            PIPELINE_TASK: {"queue": PIPELINE_QUEUE},
        },
        task_default_queue="encode",
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={
            "visibility_timeout": settings.task_time_limit_s + 60,
            "queue_order_strategy": "priority",  # -Q encode.high,encode: the high one first
        },
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def task_id(stage: str, job_id: str) -> str:
    """The Celery task id of a stage: the job id first, so that every line a worker logs about
    the task (received, succeeded, retry, the traceback of a failure) names the job."""
    return f"{job_id}.{stage}.{secrets.token_hex(4)}"


def queue_for(stage: str, priority: str | None) -> str:
    return f"{stage}{HIGH}" if priority == "high" else str(stage)


def enqueuer(app: Celery, priority_of: Callable[[str], str | None] | None = None):
    """enqueue(stage, job_id): a message that carries only the job id, on the queue of the
    job's priority (`priority_of(job_id)`, the job store's; every caller enqueues the same
    way, so a retried stage keeps its priority). `front=True` (the sweeper, for a stage whose
    worker died) sends it on the high-priority queue: it has waited its turn once, and a
    backlog of hundreds must not make it wait again."""

    def enqueue(stage: str, job_id: str, front: bool = False) -> None:
        priority = "high" if front else (priority_of(job_id) if priority_of else None)
        queue = queue_for(stage, priority)
        app.send_task(TASK_NAMES[stage], args=[job_id], queue=queue, task_id=task_id(stage, job_id))

    return enqueue


def pipeline_enqueuer(app: Celery) -> PipelineEnqueue:
    """enqueue(run_id, name, params): a pipeline run for the pipeline worker."""

    def enqueue(run_id: str, name: str, params: dict[str, Any]) -> None:
        app.send_task(PIPELINE_TASK, args=[run_id, name, params], queue=PIPELINE_QUEUE)

    return enqueue


def queues_with_workers(app: Celery, timeout: float = 1.0) -> set[str]:
    """The queues at least one live worker consumes."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {queue["name"] for queues in replies.values() for queue in queues}


def queue_depth(redis: Any, queue: str) -> int:
    """Messages waiting in a job queue (its high-priority list included); `redis` a client."""
    return int(redis.llen(queue)) + int(redis.llen(f"{queue}{HIGH}"))


def live_workers(app: Celery, timeout: float = 1.0) -> set[str]:
    """The node names of the workers that answer a ping within `timeout`."""
    return {name for reply in app.control.ping(timeout=timeout) or [] for name in reply}


def worker_argv(queue: str, name: str, settings: Settings) -> list[str]:
    """The Celery command line of one worker: the encoder and the generator run threads (the
    encoder's jobs share encoder passes, the generator's one batching engine), the pipeline
    worker one thread: one pipeline at a time (each in its own process), and its main thread
    stays free to answer `worker-ping` while a run lasts (a busy solo worker does not, and its
    liveness probe would restart it mid-run)."""
    threads = {
        "encode": settings.encoder_concurrency,
        "generate": settings.generator_concurrency,
        ANNOTATE_QUEUE: settings.annotate_concurrency,
        PIPELINE_QUEUE: 1,
    }[queue]
    app = "pipelines.worker" if queue == PIPELINE_QUEUE else "services.worker"
    queues = queue if queue == PIPELINE_QUEUE else f"{queue}{HIGH},{queue}"
    return [
        *("-m", "celery", "-A", app, "worker", "-Q", queues, "-P", "threads", "-c", str(threads)),
        *("-n", name, "--without-gossip", "--without-mingle", "-l", "INFO"),
    ]
