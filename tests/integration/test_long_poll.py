"""The long poll on Redis notices: a waiting client hears of its job's end at once, and costs
the job store a read per change instead of one every 20 ms."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from services.core.events import JobEvents
from services.core.jobstate import Stage
from services.core.jobstore import JobStore
from services.gateway.app import create_app
from tests.jobs_env import make_context, write_checkpoint


class CountingStore(JobStore):
    reads = 0

    def get_job(self, job_id, tenant=None):
        CountingStore.reads += 1
        return super().get_job(job_id, tenant)


def test_a_waiting_client_hears_of_the_end_at_once_and_reads_little(tmp_path, redis_url):
    write_checkpoint(tmp_path / "models" / "tiny")
    ctx = make_context(tmp_path, redis_url=redis_url)
    ctx.store = CountingStore(ctx.store.engine, events=JobEvents(redis_url))
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    key, principal = ctx.store.create_key("alice", ["jobs"])
    job = ctx.store.create_job(
        tenant=principal.tenant,
        task="caption",
        model="tiny",
        audio_key="a",
        audio_sha256="0",
        audio_seconds=1.0,
    )

    def finish_later() -> None:
        time.sleep(1.3)
        assert ctx.store.claim_stage(job.id, Stage.ENCODE)
        for step in range(10):  # progress notices: they must not wake the long poll
            ctx.store.heartbeat(job.id, progress=step / 10)
        ctx.finished_at = time.monotonic()
        ctx.store.fail(job.id, "encode_failed", "on purpose")

    with TestClient(app) as client:
        CountingStore.reads = 0
        threading.Thread(target=finish_later).start()
        answer = client.get(
            f"/v1/jobs/{job.id}", params={"wait": 20}, headers={"Authorization": f"Bearer {key}"}
        )
        answered_at = time.monotonic()
    assert answer.json()["status"] == "failed"
    assert answered_at - ctx.finished_at < 0.5  # the notice, not the 1 s fallback read
    # 1.3 s of waiting at a read every 20 ms would be ~65 reads; the status notices (claim,
    # fail) and the 1 s fallback make a handful, and the 10 progress notices none.
    assert CountingStore.reads <= 8, CountingStore.reads
