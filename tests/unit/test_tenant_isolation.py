"""Tenants never see each other's jobs, results, events, audio, datasets, pipeline runs or signing
secrets, on every route (found from the app itself, so a new route is covered), and cannot tell
another tenant's resource from one that does not exist. Caches: tests/unit/test_jobs.py (features)
and tests/unit/test_engine.py (prompt prefixes)."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from fastapi.testclient import TestClient

from services.core import lifecycle
from services.core.jobstore import RunStore
from services.gateway.app import create_app
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context, write_checkpoint

SCOPES = ["jobs", "datasets"]
CLIP = encode(*stereo_tone(1.0), 44_100, "flac")
DIGEST = hashlib.sha256(CLIP).hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_checkpoint(home / "models" / "tiny")
    ctx = make_context(home)
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    alice, alice_key = ctx.store.create_key("alice", SCOPES)
    bob, bob_key = ctx.store.create_key("bob", SCOPES)
    with TestClient(app) as client:
        a = {"Authorization": f"Bearer {alice}"}
        job = client.post(
            "/v1/jobs",
            headers={**a, "Idempotency-Key": "same-key"},
            files={"file": ("a.flac", CLIP, "audio/flac")},
            data={"task": "caption"},
        )
        assert job.status_code == 202, job.text
        assert (
            client.put(f"/v1/datasets/calls/audio/{DIGEST}", headers=a, content=CLIP).status_code
            == 204
        )
        manifest = json.dumps({"id": "1", "audio": f"audio/{DIGEST}", "transcript": "hi"})
        assert (
            client.put("/v1/datasets/calls/manifest", headers=a, content=manifest).status_code
            == 201
        )
        run = lifecycle.start_pipeline(
            ctx.settings, lambda *_: None, "sft", {}, runs=RunStore.of(ctx.store), tenant="alice"
        )  # one of Alice's runs (as her imports are made)
        yield {
            "client": client,
            "app": app,
            "alice": alice,
            "bob": bob,
            "job": job.json()["id"],
            "run": run["run_id"],
            "alice_key_id": alice_key.id,
            "bob_key_id": bob_key.id,
        }


def resource_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route that names a job, a dataset, a pipeline run or a key in its
    path (from the OpenAPI document: every route the app serves but its own docs)."""
    found = []
    for path, operations in app.openapi()["paths"].items():
        if re.search(r"\{(job_id|name|key_id|run_id)\}", path):
            found += [(method.upper(), path) for method in sorted(operations)]
    return found


def call(env, method: str, path: str, key: str, job_id: str, name: str, key_id: str, run=""):
    url = (
        path.replace("{job_id}", job_id)
        .replace("{run_id}", run)
        .replace("{name}", name)
        .replace("{key_id}", key_id)
        .replace("{digest}", DIGEST)
    )
    body: dict = {}
    if method in ("POST", "PUT"):
        body = {"content": json.dumps({"digests": [DIGEST]})} if "audio-check" in path else {}
        if path.endswith("/audio/{digest}"):
            body = {"content": CLIP}
        elif path.endswith("/manifest"):
            body = {"content": json.dumps({"id": "2", "audio": f"audio/{DIGEST}", "caption": "x"})}
    return env["client"].request(method, url, headers={"Authorization": f"Bearer {key}"}, **body)


def test_every_route_that_names_a_resource_was_found(env) -> None:
    paths = {path for _, path in resource_routes(env["app"])}
    for expected in ("/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events", "/v1/datasets/{name}",
                     "/v1/pipelines/runs/{run_id}", "/v1/pipelines/runs/{run_id}/log"):  # fmt: skip
        assert expected in paths


def test_another_tenant_gets_what_a_stranger_gets(env) -> None:
    """Bob, on each of Alice's resources, gets exactly the answer he gets for a resource that
    does not exist: same status, same code (so he cannot even learn that it exists). The
    dataset PUTs are the exception by design: a name is per tenant, so Bob's PUT makes a dataset
    of his own, and Alice's stays as it was."""
    checked = 0
    for method, path in resource_routes(env["app"]):
        if path.startswith(("/v1/registry", "/v1/pipelines/{name}", "/v1/models")):
            continue  # platform resources, the same for every tenant (a run is a tenant's)
        if method == "DELETE" and path == "/v1/keys/{key_id}":
            continue  # admin only: tests/unit/test_auth_matrix.py
        if method in ("PUT", "POST") and path.startswith("/v1/datasets/{name}"):
            continue  # writes to Bob's own namespace: checked below
        theirs = call(env, method, path, env["bob"], env["job"], "calls", env["alice_key_id"],
                      env["run"])  # fmt: skip
        nobody = call(env, method, path, env["bob"], "0" * 8 + "-0000-0000-0000-" + "0" * 12,
                      "no-such-dataset", "0" * 36, "0" * 12)  # fmt: skip
        assert theirs.status_code == nobody.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"]["code"] == nobody.json()["error"]["code"], (method, path)
        checked += 1
    assert checked >= 8
    a = {"Authorization": f"Bearer {env['alice']}"}
    alice_jobs = env["client"].get("/v1/jobs", headers=a).json()["jobs"]
    bob_jobs = env["client"].get("/v1/jobs", headers={"Authorization": f"Bearer {env['bob']}"})
    assert env["job"] in [j["id"] for j in alice_jobs]
    assert env["job"] not in [j["id"] for j in bob_jobs.json()["jobs"]]
    assert env["client"].get("/v1/jobs/" + env["job"], headers=a).status_code == 200


def test_a_dataset_name_is_per_tenant(env) -> None:
    client, a = env["client"], {"Authorization": f"Bearer {env['alice']}"}
    b = {"Authorization": f"Bearer {env['bob']}"}
    check = client.post("/v1/datasets/calls/audio-check", headers=b, json={"digests": [DIGEST]})
    assert check.json()["missing"] == [DIGEST]  # Alice's copy of the audio is not his
    manifest = json.dumps({"id": "1", "audio": f"audio/{DIGEST}", "caption": "x"})
    refused = client.put("/v1/datasets/calls/manifest", headers=b, content=manifest)
    assert refused.status_code in (201, 422)
    if refused.status_code == 201:  # committed with no clips of his: never Alice's audio
        assert refused.json()["clips"] == 0
    stolen = json.dumps(
        {"id": "1", "audio": f"datasets/alice/calls/audio/{DIGEST}", "caption": "x"}
    )
    assert client.put("/v1/datasets/steal/manifest", headers=b, content=stolen).status_code == 422
    assert [d["name"] for d in client.get("/v1/datasets", headers=b).json()] in (
        [],
        ["calls"],
    )
    mine = client.get("/v1/datasets/calls/manifest", headers=a)
    assert mine.status_code == 200 and "transcript" in mine.text


def test_an_idempotency_key_is_per_tenant(env) -> None:
    """Bob reusing Alice's Idempotency-Key gets a job of his own, never a replay of hers."""
    response = env["client"].post(
        "/v1/jobs",
        headers={"Authorization": f"Bearer {env['bob']}", "Idempotency-Key": "same-key"},
        files={"file": ("a.flac", CLIP, "audio/flac")},
        data={"task": "caption"},
    )
    assert response.status_code == 202, response.text
    assert response.json()["id"] != env["job"]
    assert "idempotent-replayed" not in response.headers
