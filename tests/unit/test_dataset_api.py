"""The datasets API on the real gateway app and local object store: content-addressed audio,
a manifest checked line by line, tenants kept apart, nothing stored from a bad upload."""

from __future__ import annotations

import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context, write_checkpoint


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_checkpoint(home / "models" / "tiny")
    ctx = make_context(home, max_upload_mb=1.0)
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    keys = {
        "alice": ctx.store.create_key("alice", ["datasets"])[0],
        "bob": ctx.store.create_key("bob", ["datasets"])[0],
        "jobs": ctx.store.create_key("carol", ["jobs"])[0],
    }
    with TestClient(app) as client:
        yield client, ctx, keys


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def audio_objects(ctx) -> list[str]:
    return [k for k in ctx.storage.list_keys("datasets/") if "/audio/" in k]


def test_upload_check_commit_list_and_delete(env) -> None:
    client, ctx, keys = env
    a = encode(*stereo_tone(1.0), 44_100, "flac")
    b = encode(*stereo_tone(2.0), 44_100, "wav")
    da, db = hashlib.sha256(a).hexdigest(), hashlib.sha256(b).hexdigest()
    alice = auth(keys["alice"])
    check = client.post("/v1/datasets/calls/audio-check", headers=alice,
                        json={"digests": [da, db, da]})  # fmt: skip
    assert check.status_code == 200 and check.json()["missing"] == [da, db]
    lying = client.put(f"/v1/datasets/calls/audio/{da}", headers=alice, content=b)
    assert lying.status_code == 422 and lying.json()["error"]["code"] == "digest_mismatch"
    assert audio_objects(ctx) == []  # a refused body leaves nothing behind
    for digest, body in ((da, a), (db, b)):
        sent = client.put(f"/v1/datasets/calls/audio/{digest}", headers=alice, content=body)
        assert sent.status_code == 204
    check = client.post("/v1/datasets/calls/audio-check", headers=alice, json={"digests": [da]})
    assert check.json()["missing"] == []  # a re-upload sends nothing twice
    lines = [
        {"id": "1", "audio": f"audio/{da}", "transcript": "hello", "split": "heldout"},
        {"id": "2", "audio": f"audio/{db}", "segments": [{"start": 2.0, "end": 1.0, "text": "x"}]},
        {"id": "3", "audio": "audio/" + "0" * 64, "caption": "never uploaded"},
        {"id": "4", "audio": f"audio/{db}", "events": [{"label": "tone", "start": 0, "end": 2}]},
    ]
    manifest = "\n".join(json.dumps(line) for line in lines).encode()
    strict = client.put("/v1/datasets/calls/manifest?strict=true", headers=alice, content=manifest)
    assert strict.status_code == 422 and "2 bad line(s)" in strict.json()["error"]["message"]
    committed = client.put("/v1/datasets/calls/manifest", headers=alice, content=manifest)
    assert committed.status_code == 201, committed.text
    info = committed.json()
    assert info["clips"] == 2 and info["skipped_lines"] == 2
    assert info["splits"] == {"heldout": 1, "train": 1}
    assert info["families"] == ["caption", "events", "speech"]
    assert any(p.startswith("line 2, field segments[0].end") for p in info["problems"])
    assert any(p.startswith("line 3, field audio") for p in info["problems"])
    stored = ctx.storage.get_bytes(info["manifest"])
    assert hashlib.sha256(stored).hexdigest() == info["digest"]
    assert json.loads(stored.splitlines()[0])["audio"] == f"datasets/alice/calls/audio/{da}"
    listed = client.get("/v1/datasets", headers=alice).json()
    assert [d["name"] for d in listed] == ["calls"] and listed[0]["digest"] == info["digest"]

    bob = auth(keys["bob"])  # another tenant sees nothing of alice's
    assert client.get("/v1/datasets", headers=bob).json() == []
    assert client.get("/v1/datasets/calls", headers=bob).status_code == 404
    assert client.post("/v1/datasets/calls/audio-check", headers=bob,
                       json={"digests": [da]}).json()["missing"] == [da]  # fmt: skip
    assert client.get("/v1/datasets", headers=auth(keys["jobs"])).status_code == 403
    assert client.get("/v1/datasets").status_code == 401

    assert client.delete("/v1/datasets/calls", headers=alice).status_code == 204
    assert client.get("/v1/datasets/calls", headers=alice).status_code == 404
    assert audio_objects(ctx) == []


def test_bad_names_digests_and_bodies_get_clear_errors(env) -> None:
    client, ctx, keys = env
    alice = auth(keys["alice"])
    bad = client.post("/v1/datasets/Bad Name/audio-check", headers=alice, json={"digests": []})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_dataset_name"
    short = client.put("/v1/datasets/x/audio/abc", headers=alice, content=b"data")
    assert short.json()["error"]["code"] == "invalid_digest"
    big = b"\0" * (1024 * 1024 + 10)
    digest = hashlib.sha256(big).hexdigest()
    too_big = client.put(f"/v1/datasets/x/audio/{digest}", headers=alice, content=big)
    assert too_big.status_code == 413 and audio_objects(ctx) == []
    empty = client.put("/v1/datasets/x/manifest", headers=alice, content=b"\n\n")
    assert empty.status_code == 422 and "no valid line" in empty.json()["error"]["message"]
    binary = client.put("/v1/datasets/x/manifest", headers=alice, content=b"\xff\xfe{}")
    assert "not UTF-8" in binary.json()["error"]["message"]
    assert client.delete("/v1/datasets/x", headers=alice).status_code == 404


def test_annotation_jobs_check_their_input_and_are_queued_on_the_annotate_stage(env) -> None:
    client, ctx, keys = env
    alice = auth(keys["alice"])
    audio = encode(*stereo_tone(1.0), 44_100, "wav")
    digest = hashlib.sha256(audio).hexdigest()
    client.put(f"/v1/datasets/field/audio/{digest}", headers=alice, content=audio)
    absent = {"dataset": "field", "items": [{"audio": "audio/" + "1" * 64}]}
    missing = client.post("/v1/annotations", headers=alice, json=absent)
    assert missing.status_code == 422 and missing.json()["error"]["code"] == "audio_not_found"
    unknown = client.post("/v1/annotations", headers=alice, json={"dataset": "nothing-here"})
    assert unknown.status_code == 404
    items = [{"audio": f"audio/{digest}", "id": "a", "split": "test"}]
    webhook = {"dataset": "field", "items": items, "webhook_url": "https://93.184.216.34/hook"}
    hooked = client.post("/v1/annotations", headers=alice, json=webhook)
    assert hooked.status_code == 202 and hooked.json()["webhook"]["url"].endswith("/hook")
    private = {**webhook, "webhook_url": "http://10.0.0.1/hook"}  # the egress guard applies
    refused = client.post("/v1/annotations", headers=alice, json=private)
    assert refused.status_code == 422
    assert client.post("/v1/annotations", headers=auth(keys["jobs"]),
                       json={"dataset": "field"}).status_code == 403  # fmt: skip
    created = client.post(
        "/v1/annotations", headers=alice, json={"dataset": "field", "items": items}
    )
    assert created.status_code == 202, created.text
    job = created.json()
    assert job["task"] == "annotate" and job["status"] == "queued" and job["params"]["items"] == 1
    assert ("annotate", job["id"]) in ctx.enqueue.calls
    stored = json.loads(ctx.storage.get_bytes(f"annotations/alice/{job['id']}/input.jsonl"))
    assert stored == {"id": "a", "audio": f"datasets/alice/field/audio/{digest}", "split": "test"}
    other = client.get(f"/v1/jobs/{job['id']}", headers=auth(keys["bob"]))
    assert other.status_code in (403, 404)  # bob's key has no jobs scope, and it is alice's job
