"""The HTTP API over a real job store and storage, with enqueues recorded (no broker here)."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context, write_checkpoint


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_checkpoint(home / "models" / "tiny")
    ctx = make_context(home, max_upload_mb=1.0, max_audio_seconds=10.0)
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    admin, _ = ctx.store.create_key("ops", ["admin", "jobs"])
    alice, _ = ctx.store.create_key("alice", ["jobs"])
    bob, _ = ctx.store.create_key("bob", ["jobs"])
    with TestClient(app) as client:
        yield client, ctx, {"admin": admin, "alice": alice, "bob": bob}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def clip(seconds: float = 1.0, fmt: str = "flac") -> bytes:
    return encode(*stereo_tone(seconds), 44_100, fmt)


def post(client, key, data=None, **fields):
    files = {"file": ("clip.flac", data if data is not None else clip(), "audio/flac")}
    return client.post(
        "/v1/jobs", headers=auth(key), files=files, data={"task": "caption", **fields}
    )


def objects(ctx) -> int:
    return sum(len(f) for _, _, f in os.walk(ctx.settings.resolved_storage_dir / "audio"))


def test_health_needs_no_key_and_readyz_reports(env) -> None:
    client, _, _ = env
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 503  # no generate worker in this test
    assert ready.json()["checks"]["workers.generate"] == "no worker"
    assert ready.json()["checks"]["database"] == "ok"


def test_submit_get_list_cancel(env) -> None:
    client, ctx, keys = env
    response = post(client, keys["alice"], max_new_tokens="5")
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["params"]["max_new_tokens"] == 5
    assert ("encode", job["id"]) in ctx.enqueue.calls
    got = client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["alice"]))
    assert got.status_code == 200 and got.json()["id"] == job["id"]
    listed = client.get("/v1/jobs?status=queued&limit=1", headers=auth(keys["alice"])).json()
    assert listed["total"] >= 1 and len(listed["jobs"]) == 1 and listed["limit"] == 1
    cancelled = client.delete(f"/v1/jobs/{job['id']}", headers=auth(keys["alice"]))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.delete(f"/v1/jobs/{job['id']}", headers=auth(keys["alice"]))
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"


def test_tenants_see_only_their_jobs(env) -> None:
    client, _, keys = env
    job = post(client, keys["alice"]).json()
    for method in ("get", "delete"):
        response = getattr(client, method)(f"/v1/jobs/{job['id']}", headers=auth(keys["bob"]))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    ids = [j["id"] for j in client.get("/v1/jobs", headers=auth(keys["bob"])).json()["jobs"]]
    assert job["id"] not in ids


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Authorization"),
        ({"Authorization": "Bearer nope"}, "unknown or revoked"),
        ({"Authorization": "Basic abc"}, "Authorization"),
    ],
)
def test_every_api_route_needs_a_key(env, headers, message) -> None:
    client, _, _ = env
    for method, path in [
        ("get", "/v1/jobs"),
        ("get", "/v1/jobs/x"),
        ("delete", "/v1/jobs/x"),
        ("post", "/v1/jobs"),
        ("get", "/v1/keys"),
    ]:
        response = getattr(client, method)(path, headers=headers)
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "unauthorized"
        assert message in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("data", "fields", "status", "code"),
    [
        (b"<html>not audio</html>" * 50, {}, 415, "not_audio"),
        (None, {"task": "dance"}, 422, "invalid_task"),
        (None, {"task": "ask"}, 422, "prompt_required"),
        (None, {"model": "missing"}, 422, "unknown_model"),
        (None, {"max_new_tokens": "many"}, 422, "invalid_request"),
        ("long", {}, 422, "audio_too_long"),
        ("big", {}, 413, "upload_too_large"),
    ],
)
def test_bad_input_gets_a_clear_error_and_leaves_nothing(env, data, fields, status, code) -> None:
    client, ctx, keys = env
    if data == "long":
        data = clip(12.0, "mp3")
    elif data == "big":
        data = os.urandom(3 * 1024 * 1024)
    before_objects, before_rows = objects(ctx), ctx.store.list_jobs("alice")[1]
    response = post(client, keys["alice"], data, **fields)
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["code"] == code and body["message"]
    assert objects(ctx) == before_objects and ctx.store.list_jobs("alice")[1] == before_rows


def test_chunked_upload_over_the_cap_is_cut_off(env) -> None:
    client, ctx, keys = env

    def body():  # a well-formed multipart upload whose file part never ends in time
        yield (
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n"
        )
        for _ in range(40):
            yield b"x" * (128 * 1024)
        yield b"\r\n--b--\r\n"

    before = objects(ctx)
    response = client.post(
        "/v1/jobs",
        headers={**auth(keys["alice"]), "Content-Type": "multipart/form-data; boundary=b"},
        content=body(),
    )
    assert response.status_code == 413 and response.json()["error"]["code"] == "upload_too_large"
    assert objects(ctx) == before


def test_missing_file_field(env) -> None:
    client, _, keys = env
    response = client.post("/v1/jobs", headers=auth(keys["alice"]), data={"task": "caption"})
    assert response.status_code == 422 and response.json()["error"]["code"] == "audio_required"
    assert "`file` or as `audio_url`" in response.json()["error"]["message"]


def test_unknown_form_fields_are_refused_and_leave_nothing(env) -> None:
    client, ctx, keys = env
    before = objects(ctx)
    response = post(client, keys["alice"], language="en", max_new_token="5")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "unknown_field"
    assert "language" in error["message"] and "max_new_token" in error["message"]
    assert objects(ctx) == before
    assert post(client, keys["alice"], max_new_tokens="5").status_code == 202  # known: fine


def test_keys_are_admin_only_and_revocable(env) -> None:
    client, _, keys = env
    assert (
        client.post("/v1/keys", headers=auth(keys["alice"]), json={"tenant": "x"}).status_code
        == 403
    )
    created = client.post("/v1/keys", headers=auth(keys["admin"]), json={"tenant": "carol"})
    assert created.status_code == 201
    key = created.json()
    assert key["key"].startswith("moss_") and key["scopes"] == ["jobs"]
    assert client.get("/v1/jobs", headers=auth(key["key"])).status_code == 200
    listed = client.get("/v1/keys", headers=auth(keys["admin"])).json()
    assert all("key" not in k and "key_hash" not in k for k in listed)
    assert client.delete(f"/v1/keys/{key['id']}", headers=auth(keys["admin"])).status_code == 204
    assert client.get("/v1/jobs", headers=auth(key["key"])).status_code == 401


def test_openapi_is_served(env) -> None:
    client, _, _ = env
    spec = client.get("/openapi.json").json()
    assert "/v1/jobs" in spec["paths"] and "/v1/jobs/{job_id}" in spec["paths"]
    assert client.get("/docs").status_code == 200


def test_docs_pages_need_no_internet_and_declare_the_bearer_scheme(env) -> None:
    import re

    client, _, _ = env
    spec = client.get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"] for s in schemes.values()] == ["bearer"]
    assert spec["paths"]["/v1/jobs"]["post"]["security"], "routes with a key declare it"
    assert "security" not in spec["paths"]["/healthz"]["get"]
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/docs-assets/") for a in assets), assets
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    bundle = client.get("/docs-assets/swagger-ui-bundle.js").text
    assert re.search(r'"5\.\d+\.\d+"', bundle), "Swagger UI 5 renders OpenAPI 3.1"


def test_long_poll_returns_when_the_job_ends(env) -> None:
    import threading

    client, ctx, keys = env
    job = post(client, keys["alice"]).json()
    queued = client.get(f"/v1/jobs/{job['id']}?wait=0.1", headers=auth(keys["alice"]))
    assert queued.json()["status"] == "queued"
    timer = threading.Timer(0.3, ctx.store.request_cancel, args=[job["id"]])
    timer.start()
    ended = client.get(f"/v1/jobs/{job['id']}?wait=30", headers=auth(keys["alice"]))
    timer.join()
    assert ended.json()["status"] == "cancelled"
    too_long = client.get(f"/v1/jobs/{job['id']}?wait=600", headers=auth(keys["alice"]))
    assert too_long.status_code == 422 and too_long.json()["error"]["code"] == "invalid_request"


def test_metrics_need_an_admin_key_and_count_jobs_and_requests(env) -> None:
    client, _, keys = env
    job_id = post(client, keys["alice"], max_new_tokens="3").json()["id"]
    client.get(f"/v1/jobs/{job_id}", headers=auth(keys["alice"]))
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=auth(keys["alice"])).status_code == 403
    response = client.get("/metrics", headers=auth(keys["admin"]))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'moss_jobs{status="queued"}' in text
    assert 'moss_http_requests_total{method="POST",route="/v1/jobs",status="202"}' in text
    assert 'route="/v1/jobs/{job_id}"' in text and job_id not in text  # templates, not ids


def test_the_official_openai_client_lists_and_retrieves_models(env) -> None:
    import openai

    client, _, keys = env
    official = openai.OpenAI(
        base_url="http://testserver/v1", api_key=keys["alice"], http_client=client
    )
    models = official.models.list()
    assert models.data[0].id == "tiny"  # the default model first
    assert all(m.object == "model" and m.owned_by in ("local", "registry") for m in models)
    assert official.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        official.models.retrieve("no-such-model")
    anonymous = openai.OpenAI(
        base_url="http://testserver/v1", api_key="moss_wrong", http_client=client
    )
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()


def test_the_registry_view_has_its_own_path(env) -> None:
    client, _, keys = env
    entries = client.get("/v1/registry/models", headers=auth(keys["alice"])).json()
    assert entries[0]["name"] == "tiny" and entries[0]["source"] == "local"
    assert entries[0]["default"] is True


def test_idempotency_key_returns_the_first_job_and_refuses_another_request(env) -> None:
    client, ctx, keys = env
    data = clip(1.0)

    def send(key: str, who: str = "alice", **fields):
        files = {"file": ("clip.flac", data, "audio/flac")}
        headers = {**auth(keys[who]), "Idempotency-Key": key}
        return client.post(
            "/v1/jobs", headers=headers, files=files, data={"task": "caption", **fields}
        )

    before = objects(ctx)
    first = send("retry-1")
    again = send("retry-1")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert objects(ctx) == before + 1  # one job, one stored upload

    other = send("retry-1", max_new_tokens="7")  # same key, another request
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert objects(ctx) == before + 1  # refused: nothing stored

    bobs = send("retry-1", who="bob")  # keys are per tenant
    assert bobs.status_code == 202 and bobs.json()["id"] != first.json()["id"]

    # After 24 h the key names nothing any more.
    from sqlalchemy import update

    from services.core.jobstore.models import IdempotencyKey, utcnow

    with ctx.store.sessions.begin() as session:
        session.execute(update(IdempotencyKey).values(created_at=utcnow() - timedelta(hours=25)))
    later = send("retry-1")
    assert later.status_code == 202 and later.json()["id"] != first.json()["id"]
    assert send("bad key with spaces").status_code == 422


def test_transcriptions_past_the_sync_limit_point_to_jobs_and_leave_nothing(env, monkeypatch):
    client, ctx, keys = env
    monkeypatch.setattr(ctx.settings, "sync_max_audio_seconds", 0.5)
    before = objects(ctx)
    response = client.post(
        "/v1/audio/transcriptions",
        headers=auth(keys["alice"]),
        files={"file": ("clip.flac", clip(1.0), "audio/flac")},
        data={"model": "tiny"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "audio_too_long_for_sync"
    assert "/v1/jobs" in response.json()["error"]["message"]
    assert objects(ctx) == before


def test_every_response_has_a_request_id_that_its_log_lines_carry(env) -> None:
    import json
    import logging

    from services.core.logs import ContextFilter, JsonFormatter

    client, _, keys = env
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    keep = Keep()
    keep.addFilter(ContextFilter())
    access = logging.getLogger("moss.access")
    access.addHandler(keep)
    access.setLevel(logging.INFO)
    try:
        mine = client.get("/v1/jobs", headers={**auth(keys["alice"]), "X-Request-ID": "abc-123"})
        fresh = client.get("/v1/jobs?limit=5&token=very-secret", headers=auth(keys["alice"]))
        refused = client.get("/v1/jobs", headers={"X-Request-ID": "bad id with spaces"})
    finally:
        access.removeHandler(keep)
    assert mine.headers["X-Request-ID"] == "abc-123"  # the caller's own id is kept
    assert len(fresh.headers["X-Request-ID"]) == 32
    assert refused.status_code == 401 and refused.headers["X-Request-ID"] != "bad id with spaces"
    ids = [r.request_id for r in records]
    assert ids == ["abc-123", fresh.headers["X-Request-ID"], refused.headers["X-Request-ID"]]
    assert all("very-secret" not in r.getMessage() for r in records)  # no query strings
    line = json.loads(JsonFormatter().format(records[0]))
    assert line["request_id"] == "abc-123" and line["logger"] == "moss.access"
    assert "GET /v1/jobs 200" in line["message"]


@pytest.mark.parametrize(
    ("messages", "code"),
    [
        ([{"role": "user", "content": ["not a part"]}], "unsupported_content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
            "unsupported_content",
        ),
        ([{"role": "user", "content": "no audio here"}], "audio_required"),
        (
            [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": 5}}]}],
            "invalid_audio_data",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}],
                }
            ],
            "invalid_audio_data",
        ),
        ([{"role": "assistant", "content": "hi"}], "unsupported_conversation"),
    ],
)
def test_malformed_chat_requests_are_clear_422s_and_make_no_job(env, messages, code) -> None:
    client, ctx, keys = env
    before = ctx.store.list_jobs("alice")[1]
    response = client.post(
        "/v1/chat/completions",
        headers=auth(keys["alice"]),
        json={"model": "tiny", "messages": messages},
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert ctx.store.list_jobs("alice")[1] == before


def test_pipeline_runs_take_an_idempotency_key(tmp_path) -> None:
    queued, failing = [], {"on": False}

    def enqueue(run_id, name, params):
        if failing["on"]:
            raise ConnectionError("broker away")
        queued.append((run_id, name, params))

    write_checkpoint(tmp_path / "models" / "tiny")
    ctx = make_context(tmp_path)
    app = create_app(ctx.settings, ctx, run_sweeper=False, enqueue_pipeline=enqueue)
    admin, _ = ctx.store.create_key("ops", ["admin"])
    url = "/v1/pipelines/evaluate/runs"
    with TestClient(app) as client:
        once = {**auth(admin), "Idempotency-Key": "nightly-eval-1"}
        first = client.post(url, headers=once, json={"params": {"per_kind": 5}})
        again = client.post(url, headers=once, json={"params": {"per_kind": 5}})
        other = client.post(url, headers=once, json={"params": {"per_kind": 6}})
        failing["on"] = True
        retry = {**auth(admin), "Idempotency-Key": "nightly-eval-2"}
        down = client.post(url, headers=retry, json={"params": {}})
        failing["on"] = False
        back = client.post(url, headers=retry, json={"params": {}})
    assert first.status_code == again.status_code == 202
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert down.status_code == 503 and back.status_code == 202  # nothing queued: key free again
    assert [q[0] for q in queued] == [first.json()["run_id"], back.json()["run_id"]]


@pytest.mark.parametrize("tenant", ["..", ".", "-x", "a/b", "../admin", ""])
def test_a_tenant_name_cannot_be_a_path(env, tenant) -> None:
    """Tenant names become object-key segments (audio/<tenant>/, datasets/<tenant>/)."""
    client, _, keys = env
    response = client.post("/v1/keys", headers=auth(keys["admin"]), json={"tenant": tenant})
    assert response.status_code == 422, response.text
