"""The Celery app on Redis/Valkey (`MOSS_REDIS_URL`): two queues, `encode` and `generate`.

Tasks are acknowledged late and rejected when their worker dies, so Redis delivers them again;
the job store's stage claims make every redelivery harmless. The visibility timeout is above
the task time limit, so a slow task is not delivered twice while it still runs (celery#5935).
"""

from __future__ import annotations

from celery import Celery

from .settings import Settings

QUEUES = ("encode", "generate")
TASK_NAMES = {"encode": "moss.encode", "generate": "moss.generate"}


def make_celery(settings: Settings) -> Celery:
    app = Celery("moss", broker=settings.redis_url or "redis://127.0.0.1:6379/0")
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        worker_prefetch_multiplier=1,
        task_routes={name: {"queue": queue} for queue, name in TASK_NAMES.items()},
        task_default_queue="encode",
        task_time_limit=settings.task_time_limit_s,
        broker_transport_options={"visibility_timeout": settings.task_time_limit_s + 60},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


def enqueuer(app: Celery):
    """enqueue(stage, job_id): a message that carries only the job id."""

    def enqueue(stage: str, job_id: str) -> None:
        app.send_task(TASK_NAMES[stage], args=[job_id], queue=stage)

    return enqueue


def queues_with_workers(app: Celery, timeout: float = 1.0) -> set[str]:
    """The queues at least one live worker consumes."""
    replies = app.control.inspect(timeout=timeout).active_queues() or {}
    return {queue["name"] for queues in replies.values() for queue in queues}


def worker_argv(queue: str, name: str, concurrency: int) -> list[str]:
    """The Celery command line of one worker: the encoder runs solo (one model call at a time,
    on the process main thread), the generator runs threads that share one batching engine."""
    pool = ["-P", "solo"] if queue == "encode" else ["-P", "threads", "-c", str(concurrency)]
    return [
        *("-m", "celery", "-A", "services.worker", "worker", "-Q", queue, *pool),
        *("-n", name, "--without-gossip", "--without-mingle", "-l", "INFO"),
    ]
