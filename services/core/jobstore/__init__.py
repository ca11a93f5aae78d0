"""The job store: jobs, API keys and pipeline runs in SQLite or PostgreSQL, schema by Alembic."""

from .deliveries import EVENTS, DueDelivery
from .models import ApiKey, Job, PipelineRun, WebhookDelivery
from .runs import RunStore
from .store import (
    ACTIVE,
    IdempotencyConflict,
    JobStore,
    Principal,
    hash_key,
    make_engine,
    migrate,
)

__all__ = [
    "ACTIVE",
    "EVENTS",
    "ApiKey",
    "DueDelivery",
    "IdempotencyConflict",
    "Job",
    "JobStore",
    "PipelineRun",
    "Principal",
    "RunStore",
    "WebhookDelivery",
    "hash_key",
    "make_engine",
    "migrate",
]
