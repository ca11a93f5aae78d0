"""The job store: jobs and API keys in SQLite or PostgreSQL, schema by Alembic."""

from .deliveries import EVENTS, DueDelivery
from .models import ApiKey, Job, WebhookDelivery
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
    "Principal",
    "WebhookDelivery",
    "hash_key",
    "make_engine",
    "migrate",
]
