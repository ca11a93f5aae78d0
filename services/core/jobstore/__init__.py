"""The job store: jobs and API keys in SQLite or PostgreSQL, schema by Alembic."""

from .models import ApiKey, Job
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
    "ApiKey",
    "IdempotencyConflict",
    "Job",
    "JobStore",
    "Principal",
    "hash_key",
    "make_engine",
    "migrate",
]
