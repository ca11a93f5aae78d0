"""Webhooks, audio_url and purging through the real gateway app, with a real HTTP receiver on
loopback (the operator allows 127.0.0.0/8 here, as for an in-cluster receiver).

Jobs are ended through the job store's own transitions (what workers call), so these tests
need no worker; tests/integration/test_stack.py runs the same through real workers.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.jobs.retention import purge_expired
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context, write_checkpoint

pytestmark = pytest.mark.integration
FLAC = encode(*stereo_tone(0.5), 44_100, "flac")


class Receiver:
    """A webhook receiver and audio host: answers `plan` status codes in turn, then 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.plan: list[int] = []
        self.files: dict[str, tuple[int, dict[str, str], bytes]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                code = receiver.plan.pop(0) if receiver.plan else 200
                self.send_response(code)
                self.send_header("content-length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                code, headers, body = receiver.files.get(self.path, (404, {}, b""))
                self.send_response(code)
                for name, value in {"content-length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.requests


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def env(tmp_path, receiver):
    write_checkpoint(tmp_path / "models" / "tiny")
    port = receiver.server.server_port
    ctx = make_context(
        tmp_path,
        egress_allow_networks="127.0.0.0/8",
        webhook_backoff_s=0.2,
        audio_url_hosts=f"127.0.0.1:{port}",
        max_upload_mb=1.0,
    )
    app = create_app(
        ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False,
        deliver_webhooks=True,
    )  # fmt: skip
    plain, record = ctx.store.create_key("alice", ["jobs"])
    with TestClient(app) as client:
        client.headers["Authorization"] = f"Bearer {plain}"
        yield client, ctx, record


def post(client, **fields):
    files = {"file": ("a.flac", FLAC, "audio/flac")} if "audio_url" not in fields else None
    return client.post("/v1/jobs", files=files, data={"task": "caption", **fields})


def finish(ctx, job_id: str, text: str = "a tone") -> None:
    """What the workers do: both stages, then the result."""
    assert ctx.store.claim_stage(job_id, "encode")
    assert ctx.store.complete_stage(job_id, "encode", features_key=None)
    assert ctx.store.claim_stage(job_id, "generate")
    assert ctx.store.complete_stage(job_id, "generate", result={"text": text})


def settled(client, job_id: str, status: str, timeout: float) -> dict:
    """The job's one delivery once it reaches `status` (or as it is at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        (delivery,) = client.get(f"/v1/jobs/{job_id}").json()["webhook"]["deliveries"]
        if delivery["status"] == status or time.monotonic() > deadline:
            return delivery
        time.sleep(0.1)


def verify(secret: str, headers: dict, body: bytes) -> bool:
    """The receiver's check, as docs/api.md shows it."""
    timestamp = headers["Moss-Webhook-Timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(headers["Moss-Webhook-Signature"], f"v1={expected.hexdigest()}")


def test_a_signed_webhook_is_retried_after_a_500_and_its_attempts_show_on_the_job(
    env, receiver
) -> None:
    client, ctx, key = env
    receiver.plan = [500]
    job = post(client, webhook_url=f"{receiver.url}/hooks?src=moss").json()
    assert job["webhook"] == {"url": f"{receiver.url}/hooks?src=moss", "deliveries": None}
    finish(ctx, job["id"])
    first, second = receiver.wait_for(2)[:2]
    for request in (first, second):
        assert verify(key.webhook_secret, request["headers"], request["body"])
    assert first["headers"]["Moss-Webhook-Id"] == second["headers"]["Moss-Webhook-Id"]
    sent = json.loads(second["body"])
    assert sent["type"] == "job.succeeded" and second["headers"]["Moss-Event"] == "job.succeeded"
    assert sent["data"]["job"]["id"] == job["id"]
    assert sent["data"]["job"]["result"]["text"] == "a tone"
    assert not verify("whsec_wrong", second["headers"], second["body"])
    assert not verify(key.webhook_secret, second["headers"], second["body"] + b" ")

    delivery = settled(client, job["id"], "delivered", timeout=10)
    assert delivery["status"] == "delivered" and delivery["event"] == "job.succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    metrics = client.app.state.gateway.metrics.render().decode()  # /metrics, for admin keys
    assert 'moss_webhook_deliveries_total{outcome="retry"} 1.0' in metrics
    assert 'moss_webhook_deliveries_total{outcome="delivered"} 1.0' in metrics


def test_cancel_and_failure_are_delivered_and_a_receiver_down_for_good_is_given_up(
    env, receiver, tmp_path
) -> None:
    client, ctx, _ = env
    cancelled = post(client, webhook_url=f"{receiver.url}/a").json()
    assert client.delete(f"/v1/jobs/{cancelled['id']}").status_code == 200
    failed = post(client, webhook_url=f"{receiver.url}/b").json()
    ctx.store.fail(failed["id"], "decode_error", "bad audio")
    received = receiver.wait_for(2)
    events = sorted(json.loads(r["body"])["type"] for r in received)
    assert events == ["job.cancelled", "job.failed"]

    ctx.settings.webhook_retry_hours = 1 / 3600  # a one-second horizon
    receiver.plan = [503] * 50
    lost = post(client, webhook_url=f"{receiver.url}/c").json()
    finish(ctx, lost["id"])
    delivery = settled(client, lost["id"], "failed", timeout=15)
    assert delivery["status"] == "failed" and delivery["next_attempt_at"] is None
    assert len(delivery["attempts"]) >= 2
    assert {a["status_code"] for a in delivery["attempts"]} == {503}


def test_the_webhook_secret_is_rotated_by_the_key_and_the_old_one_stops(env, receiver) -> None:
    client, ctx, key = env
    rotated = client.post("/v1/keys/me/webhook-secret")
    assert rotated.status_code == 201
    secret = rotated.json()["webhook_secret"]
    assert secret.startswith("whsec_") and secret != key.webhook_secret
    job = post(client, webhook_url=f"{receiver.url}/r").json()
    finish(ctx, job["id"])
    (request,) = receiver.wait_for(1)
    assert verify(secret, request["headers"], request["body"])
    assert not verify(key.webhook_secret, request["headers"], request["body"])
    _, bob = ctx.store.create_key("bob", ["jobs"])
    theirs = client.post(f"/v1/keys/{bob.id}/webhook-secret")
    assert theirs.status_code == 404  # another key is not this key's to rotate


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/hook", "http://[::1]:80/h",
     "ftp://example.com/h"],
)  # fmt: skip
def test_webhook_urls_to_inside_addresses_are_refused_and_nothing_is_kept(env, url) -> None:
    client, ctx, _ = env
    response = post(client, webhook_url=url)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] in ("url_forbidden", "invalid_url")
    assert ctx.store.list_jobs("alice")[1] == 0
    assert not any(files for _, _, files in os.walk(ctx.settings.resolved_storage_dir))


def test_audio_url_from_an_allowed_host_makes_a_job_and_hostile_ones_are_refused(
    env, receiver
) -> None:
    client, ctx, _ = env
    receiver.files = {
        "/a.flac": (200, {}, FLAC),
        "/moved": (302, {"location": "http://169.254.169.254/"}, b""),
        "/big": (200, {}, b"\0" * (1024 * 1024 + 1)),
    }
    job = post(client, audio_url=f"{receiver.url}/a.flac")
    assert job.status_code == 202, job.text
    stored = ctx.store.get_job(job.json()["id"])
    assert stored.audio_sha256 == hashlib.sha256(FLAC).hexdigest()

    moved = post(client, audio_url=f"{receiver.url}/moved")
    assert moved.status_code == 422 and moved.json()["error"]["code"] == "audio_url_failed"
    assert "redirects are not followed" in moved.json()["error"]["message"]
    big = post(client, audio_url=f"{receiver.url}/big")
    assert big.status_code == 413 and big.json()["error"]["code"] == "upload_too_large"
    elsewhere = post(client, audio_url="http://127.0.0.1:1/a.flac")  # not the listed port
    assert elsewhere.json()["error"]["code"] == "audio_url_host_not_allowed"
    both = client.post(
        "/v1/jobs",
        files={"file": ("a.flac", FLAC, "audio/flac")},
        data={"task": "caption", "audio_url": f"{receiver.url}/a.flac"},
    )
    assert both.status_code == 422 and both.json()["error"]["code"] == "audio_required"
    assert ctx.store.list_jobs("alice")[1] == 1


def test_purge_deletes_audio_features_and_result_and_retention_does_it_by_age(env) -> None:
    client, ctx, _ = env
    storage = ctx.settings.resolved_storage_dir
    job = post(client).json()
    ctx.storage.put_bytes("features/abc-v1-whole.safetensors", b"features")
    assert ctx.store.claim_stage(job["id"], "encode")
    assert ctx.store.complete_stage(
        job["id"], "encode", features_key="features/abc-v1-whole.safetensors"
    )
    purged = client.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"}).json()
    assert purged["status"] == "cancelled" and purged["purged_at"] and purged["result"] is None
    assert not any(files for _, _, files in os.walk(storage))
    assert client.get(f"/v1/jobs/{job['id']}").json()["purged_at"]

    old = post(client).json()
    finish(ctx, old["id"], text="secret words")
    young = post(client).json()
    finish(ctx, young["id"])
    ctx.settings.retention_days = 1
    from datetime import timedelta

    from sqlalchemy import update

    from services.core.jobstore.models import Job, utcnow

    with ctx.store.sessions.begin() as session:
        session.execute(
            update(Job).where(Job.id == old["id"]).values(finished_at=utcnow() - timedelta(days=2))
        )
    assert purge_expired(ctx) == [old["id"]]
    assert client.get(f"/v1/jobs/{old['id']}").json()["result"] is None
    assert client.get(f"/v1/jobs/{young['id']}").json()["result"]["text"] == "a tone"
    remaining = {f for _, _, files in os.walk(storage) for f in files}
    assert remaining == {young["id"]}  # the young job's audio only
