"""Purging a job's data: on request (DELETE /v1/jobs/{id}?purge=true) and after the retention
period (MOSS_RETENTION_DAYS, run by the sweeper).

Objects go first, then the row is marked purged: a failure in between leaves the job
purgeable again, never an object that no row points to. Features are content-addressed and
may be shared by jobs on the same audio; they are deleted unless a job still running needs
them (a finished job's reference is only a cache entry, and a later job re-encodes).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from ..core.jobstate import ACTIVE
from .context import Context

log = logging.getLogger("moss.jobs")


def purge_job(ctx: Context, job_id: str) -> bool:
    """Cancel the job if it still runs, delete its audio and features, forget its result."""
    job = ctx.store.get_job(job_id)
    if job is None:
        return False
    if job.status in ACTIVE:
        ctx.store.request_cancel(job_id)
    ctx.storage.delete(job.audio_key)
    if job.features_key and not ctx.store.features_in_use(job.features_key, besides=job_id):
        ctx.storage.delete(job.features_key)
    return ctx.store.purge(job_id)


def purge_expired(ctx: Context, limit: int = 100) -> list[str]:
    """Purge jobs that ended more than MOSS_RETENTION_DAYS ago (0: keep them)."""
    days = ctx.settings.retention_days
    if days <= 0:
        return []
    purged = []
    for job_id in ctx.store.expired(timedelta(days=days), limit=limit):
        try:
            if purge_job(ctx, job_id):
                purged.append(job_id)
        except Exception:
            log.warning("could not purge job %s; the next sweep tries again", job_id, exc_info=True)
    return purged
