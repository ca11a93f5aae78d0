"""What every job function is handed: settings, the stores, the queue, and (workers) a backend."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.jobmetrics import JobMetrics
from ..core.jobstate import Enqueue
from ..core.jobstore import JobStore
from ..core.queue import PipelineEnqueue
from ..core.settings import Settings
from ..core.storage import Storage

if TYPE_CHECKING:  # the gateway runs no model: it never imports the backends
    from ..inference import Backend


@dataclass
class Context:
    settings: Settings
    store: JobStore
    storage: Storage
    enqueue: Enqueue
    backend: Backend | None = None  # workers only
    metrics: JobMetrics | None = None  # workers: stage latency, tokens, audio seconds
    worker: str | None = None  # workers: this process's Celery node name, recorded on claims
    # gateways: the node names of the workers that answer a ping now (None: cannot tell)
    live_workers: Callable[[], set[str] | None] | None = None
    # gateways: the messages waiting in a stage's queue now
    queue_depth: Callable[[str], int] | None = None
    # gateways: sends a pipeline run's message (the sweeper re-sends a queued run's lost one)
    enqueue_pipeline: PipelineEnqueue | None = None
