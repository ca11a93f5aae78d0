"""The sweeper: what a dead worker left behind goes back on the queue.

A running stage whose heartbeat stopped is released and enqueued again; a job that waited too
long for its first (or next) stage is enqueued again. Jobs past the retention period are
purged (services.jobs.retention). The job store's guarded updates make this
safe with several sweepers (one per gateway replica).
"""

from __future__ import annotations

import logging
import threading

from .context import Context
from .retention import purge_expired

log = logging.getLogger("moss.jobs")


def sweep(ctx: Context) -> list[tuple[str, str]]:
    """Re-enqueue what a dead worker left: stale running stages, and jobs never picked up."""
    settings = ctx.settings
    actions = ctx.store.release_stale(older_than_s=settings.sweep_after_s)
    actions += ctx.store.waiting(older_than_s=settings.sweep_after_s * 5)
    for job_id, stage in actions:
        try:
            ctx.enqueue(stage, job_id)
            ctx.store.touch(job_id)
        except Exception:
            log.warning("sweeper could not enqueue %s for %s", stage, job_id, exc_info=True)
    return actions


def run_sweeper(ctx: Context, stop: threading.Event) -> None:
    """Sweep every quarter of MOSS_SWEEP_AFTER_S until `stop` is set (a gateway thread)."""
    interval = max(1.0, ctx.settings.sweep_after_s / 4)
    while not stop.wait(interval):
        try:
            for job_id, stage in sweep(ctx):
                log.warning("re-enqueued %s of job %s (worker lost or message lost)", stage, job_id)
            if purged := purge_expired(ctx):
                log.info("retention: purged %d job(s) older than %g days", len(purged),
                         ctx.settings.retention_days)  # fmt: skip
        except Exception:
            log.exception("sweep failed")
