"""Admission on a real Valkey: the per-key rate limit, the tenant's quota of active jobs, and
the queue-depth limit, each refusing with its code and a Retry-After."""

from __future__ import annotations

import redis
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.audio_files import encode, stereo_tone
from tests.integration.conftest import redis_db
from tests.jobs_env import make_context, write_checkpoint


def app_with(tmp_path, redis_url, **limits):
    url = redis_db(redis_url, 7)  # a database of its own: stray `encode` items
    redis.Redis.from_url(url).flushdb()
    write_checkpoint(tmp_path / "models" / "tiny")
    ctx = make_context(tmp_path, redis_url=url, **limits)
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    return app, ctx, url


def post(client, key):
    files = {"file": ("a.flac", encode(*stereo_tone(0.5), 44_100, "flac"), "audio/flac")}
    return client.post(
        "/v1/jobs",
        headers={"Authorization": f"Bearer {key}"},
        files=files,
        data={"task": "caption"},
    )


def test_a_key_past_its_rate_gets_429_with_retry_after(tmp_path, redis_url) -> None:
    app, ctx, _ = app_with(tmp_path, redis_url, rate_limit_per_minute=6, rate_burst=3)
    busy, _ = ctx.store.create_key("alice", ["jobs"])
    calm, _ = ctx.store.create_key("alice", ["jobs"])
    with TestClient(app) as client:
        codes = [
            client.get("/v1/jobs", headers={"Authorization": f"Bearer {busy}"}).status_code
            for _ in range(4)
        ]
        refused = client.get("/v1/jobs", headers={"Authorization": f"Bearer {busy}"})
        other = client.get("/v1/jobs", headers={"Authorization": f"Bearer {calm}"})
        health = [client.get("/healthz").status_code for _ in range(10)]
    assert codes == [200, 200, 200, 429]
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 10  # one token per 10 s
    assert other.status_code == 200  # per key
    assert set(health) == {200}  # not counted


def test_the_tenant_quota_and_the_queue_depth_shed_new_jobs(tmp_path, redis_url) -> None:
    app, ctx, url = app_with(tmp_path, redis_url, max_active_jobs_per_tenant=1, max_queue_depth=2)
    alice, _ = ctx.store.create_key("alice", ["jobs"])
    bob, _ = ctx.store.create_key("bob", ["jobs"])
    carol, _ = ctx.store.create_key("carol", ["jobs"])
    with TestClient(app) as client:
        assert post(client, alice).status_code == 202  # queued: no worker runs here
        over = post(client, alice)
        assert over.status_code == 429 and over.json()["error"]["code"] == "quota_exceeded"
        assert int(over.headers["Retry-After"]) >= 1
        assert post(client, bob).status_code == 202  # another tenant's quota
        redis.Redis.from_url(url).rpush("encode", b"x", b"y")  # two messages waiting
        full = post(client, carol)
    assert full.status_code == 503 and full.json()["error"]["code"] == "queue_full"
    assert int(full.headers["Retry-After"]) >= 1
    assert ctx.store.count_active("alice") == 1 and ctx.store.count_active("bob") == 1
