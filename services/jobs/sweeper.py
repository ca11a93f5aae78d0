"""The sweeper: what a dead worker or a lost message left behind goes back on the queue.

Within seconds: the stages of a worker that no longer answers a ping, and what a restarted
worker's node name still held (both ahead of the backlog: they had their turn), and jobs waiting
on an empty queue (their message was lost). A pipeline run whose worker is gone is failed
(`worker_lost`), never run again; a queued one whose message was lost is sent again (it never
started). After minutes, the rules that need no broker: a
running stage whose heartbeat stopped, a job that waited too long. Jobs past the retention
period are purged (services.jobs.retention), and the uploaded archive of an import run that
ended without deleting it (cancelled while queued, its worker killed) is deleted. The job
store's guarded updates make this safe with several sweepers (one per gateway replica), and a
duplicate message is a no-op (claims).
"""

from __future__ import annotations

import logging
import threading

from ..core.imports import sweep_uploads
from ..core.jobstore import RunStore
from ..core.queue import PIPELINE_QUEUE
from .context import Context
from .retention import purge_expired

log = logging.getLogger("moss.jobs")

# A claim is orphaned only when its worker missed the ping AND its heartbeat has been quiet this
# many beats: a live worker can miss a ping under load (its reply came after the timeout), and on
# a busy machine a beat can come late. Two beats proved too thin on a loaded 2-core machine (a
# killed worker's job was claimed once more than the kill explains: work done twice).
QUIET_BEATS = 4


def sweep(ctx: Context) -> list[tuple[str, str]]:
    """Re-enqueue what a dead worker left: stages of workers that no longer answer a ping (within
    seconds), stale running stages (heartbeat older than MOSS_SWEEP_AFTER_S: a worker that lost
    its name too), and jobs never picked up (their message lost)."""
    settings = ctx.settings
    live = _live(ctx)
    given_back = _orphans(ctx, live) + ctx.store.release_stale(older_than_s=settings.sweep_after_s)
    _enqueue(ctx, given_back, front=True)  # they had their turn: ahead of the backlog
    _lost_runs(ctx, live)
    for run_id in _lost_queued_runs(ctx):
        log.warning("pipeline run %s sent again (its message was lost)", run_id)
    resent = _lost(ctx) + ctx.store.waiting(older_than_s=settings.sweep_after_s * 5)
    _enqueue(ctx, list(dict.fromkeys(resent)))
    return given_back + resent


def _lost(ctx: Context) -> list[tuple[str, str]]:
    """Jobs waiting for a stage whose queue is empty: their message is gone (the broker lost
    it, or the enqueue failed), since a message in an empty queue is taken within moments. Sent
    again after MOSS_LOST_MESSAGE_AFTER_S, not after five times MOSS_SWEEP_AFTER_S (the rule
    below, for when the queue is never empty). A message that did exist makes a duplicate,
    which the stage claim turns into a no-op."""
    if ctx.queue_depth is None:
        return []
    waiting = ctx.store.waiting(older_than_s=ctx.settings.lost_message_after_s)
    try:
        empty = {stage for stage in {s for _, s in waiting} if ctx.queue_depth(stage) == 0}
    except Exception:  # the broker is away: its messages cannot be counted
        return []
    return [(job_id, stage) for job_id, stage in waiting if stage in empty]


def recover_own(ctx: Context) -> list[tuple[str, str]]:
    """A worker that has just started gives back what its name still holds: the stages its
    previous life was running when it died (SIGKILL, OOM). They go back on the queue at once."""
    if ctx.worker is None:
        return []
    actions = ctx.store.release_orphans(worker=ctx.worker)
    _enqueue(ctx, actions, front=True)
    return actions


def _live(ctx: Context) -> set[str] | None:
    """The workers that answer a ping now; None: unknown (the broker is away)."""
    if ctx.live_workers is None:
        return None
    try:
        return ctx.live_workers()
    except Exception:  # the broker is away: nobody can be told dead
        log.warning("sweeper could not ping the workers", exc_info=True)
        return None


def _orphans(ctx: Context, live: set[str] | None) -> list[tuple[str, str]]:
    if live is None:
        return []
    return ctx.store.release_orphans(live=live, older_than_s=QUIET_BEATS * ctx.settings.heartbeat_s)


def _lost_runs(ctx: Context, live: set[str] | None) -> None:
    """Fail the pipeline runs whose worker no longer answers and has not touched them for
    MOSS_SWEEP_AFTER_S (a pipeline worker touches the runs it follows every few seconds; a run
    is never started again: training is not idempotent)."""
    if live is None:
        return
    for run_id in RunStore.of(ctx.store).fail_orphans(
        live=live, quiet_s=ctx.settings.sweep_after_s
    ):
        log.warning("pipeline run %s failed: its pipeline worker is gone", run_id)


def _ended_uploads(ctx: Context) -> None:
    """Delete what ended import runs left under imports/{tenant}/uploads/ (an archive may be
    tens of GB; services.core.imports.sweep_uploads)."""
    try:
        deleted = sweep_uploads(ctx.storage, RunStore.of(ctx.store))
    except Exception:  # the store is away: the next sweep tries again
        log.warning("sweeper could not delete ended imports' uploads", exc_info=True)
        return
    for key in deleted:
        log.info("deleted the upload %s: its import run has ended", key)


def _lost_queued_runs(ctx: Context) -> list[str]:
    """Send again the pipeline runs that have waited MOSS_LOST_MESSAGE_AFTER_S while the
    `pipelines` queue is empty: their message is gone (the broker restarted, or a worker died
    between taking it and starting the run; messages are acknowledged on receipt). Safe: a
    queued run never started, so nothing trained, and a message that did exist makes a
    duplicate the worker skips (`RunStore.start` takes a queued run once). A run stays `queued`
    while the queue holds messages (it waits its turn) or while the broker is away."""
    if ctx.queue_depth is None or ctx.enqueue_pipeline is None:
        return []
    runs = RunStore.of(ctx.store)
    waiting = runs.lost_queued(older_than_s=ctx.settings.lost_message_after_s)
    if not waiting:
        return []
    try:
        if ctx.queue_depth(PIPELINE_QUEUE) != 0:
            return []
    except Exception:  # the broker is away: its messages cannot be counted
        return []
    sent = []
    for run in waiting:
        try:
            ctx.enqueue_pipeline(run.id, run.name, run.params)
        except Exception:
            log.warning("sweeper could not send pipeline run %s again", run.id, exc_info=True)
            continue
        if runs.resent(run.id):
            sent.append(run.id)
    return sent


def _enqueue(ctx: Context, actions: list[tuple[str, str]], front: bool = False) -> None:
    for job_id, stage in actions:
        try:
            ctx.enqueue(stage, job_id, front=front)
            ctx.store.touch(job_id)
        except Exception:
            log.warning("sweeper could not enqueue %s for %s", stage, job_id, exc_info=True)


def run_sweeper(ctx: Context, stop: threading.Event) -> None:
    """Sweep at start, then every MOSS_ORPHAN_CHECK_S (at most a quarter of
    MOSS_SWEEP_AFTER_S) until `stop` is set (a gateway thread)."""
    interval = max(1.0, min(ctx.settings.sweep_after_s / 4, ctx.settings.orphan_check_s))
    while True:  # the first sweep at once: a gateway (re)started after a crash recovers now
        try:
            for job_id, stage in sweep(ctx):
                log.warning("re-enqueued %s of job %s (worker lost or message lost)", stage, job_id)
            _ended_uploads(ctx)
            if purged := purge_expired(ctx):
                log.info("retention: purged %d job(s) older than %g days", len(purged),
                         ctx.settings.retention_days)  # fmt: skip
        except Exception:
            log.exception("sweep failed")
        if stop.wait(interval):
            return
