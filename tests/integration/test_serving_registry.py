"""Serving follows the registry: a running worker picks up an alias move; promote and rollback
over the API; /v1/registry/models lists versions and aliases."""

from __future__ import annotations

import time

import httpx
import mlflow
import pytest

from services.core.registry import CHECKPOINT_ARTIFACT, Registry
from services.core.settings import Settings
from services.stack import BOOTSTRAP_MODEL, LocalStack, free_port
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import write_checkpoint

pytestmark = pytest.mark.integration


def register_version(registry: Registry, tmp_path, seed: int, metrics: dict) -> str:
    checkpoint = write_checkpoint(tmp_path / f"ckpt-{seed}", seed=seed)
    mlflow.set_tracking_uri(registry.tracking_uri)
    # by name: an experiment id an earlier test set in this process may not exist here
    mlflow.set_experiment("tests")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(checkpoint), CHECKPOINT_ARTIFACT)
    return registry.register(
        BOOTSTRAP_MODEL, run.info.run_id, data_digest="0" * 64, parent=None, metrics=metrics
    )


def run_job(client: httpx.Client, freq: float) -> dict:
    data = encode(*stereo_tone(1.0, freq=freq), 44_100, "flac")
    job = client.post(
        "/v1/jobs",
        files={"file": ("a.flac", data)},
        data={"task": "caption", "max_new_tokens": "4"},
    ).json()
    deadline = time.monotonic() + 90
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job['id']}", params={"wait": 10}).json()
    assert job["status"] == "succeeded", job
    return job


def test_workers_follow_alias_moves(tmp_path, redis_url) -> None:
    settings = Settings(
        home=tmp_path / "home", port=free_port(), redis_url=redis_url, generator_concurrency=2
    )
    stack = LocalStack(settings)
    try:
        stack.prepare()
        stack.start_redis()
        stack.start_mlflow()
        stack.choose_default_model()
        assert stack.default_model == BOOTSTRAP_MODEL and stack.needs_training()
        registry = Registry(stack.mlflow_uri)
        good = {"event_qa_accuracy": 0.9, "timestamp_error_median_s": 0.5}
        first = register_version(registry, tmp_path, 11, good)
        second = register_version(registry, tmp_path, 12, good)
        stack.start_gateway()
        for queue in ("encode", "generate"):
            stack.start_worker(queue)
        stack.wait_ready()
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
            move = f"/v1/registry/models/{BOOTSTRAP_MODEL}/aliases/production"
            assert client.post(move, json={"version": first}).status_code == 200
            job = run_job(client, 300.0)
            assert job["params"]["model_version"] == first
            assert job["result"]["model"]["registry_version"] == first  # who answered
            assert job["result"]["model"]["name"] == BOOTSTRAP_MODEL

            assert client.post(move, json={"version": second}).status_code == 200
            time.sleep(5.5)  # workers cache alias lookups for 5 s
            assert run_job(client, 310.0)["params"]["model_version"] == second

            models = {m["name"]: m for m in client.get("/v1/registry/models").json()}
            entry = models[BOOTSTRAP_MODEL]
            assert entry["aliases"]["production"] == second
            assert [v["version"] for v in entry["versions"]] == [first, second]
            # The OpenAI-shaped list names the model and each of its aliases.
            ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
            assert {BOOTSTRAP_MODEL, f"{BOOTSTRAP_MODEL}@production"} <= set(ids)

            rollback = f"/v1/registry/models/{BOOTSTRAP_MODEL}/rollback"
            assert client.post(rollback, json={}).status_code == 422  # the alias has no default
            back = client.post(rollback, json={"alias": "production"})
            assert back.status_code == 200 and back.json()["version"] == first
            time.sleep(5.5)
            assert run_job(client, 320.0)["params"]["model_version"] == first

            worse = register_version(registry, tmp_path, 13, {"event_qa_accuracy": 0.1})
            refused = client.post(move, json={"version": worse})
            assert refused.status_code == 409
            assert refused.json()["error"]["code"] == "promotion_refused"
    finally:
        stack.stop()
