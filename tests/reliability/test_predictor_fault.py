"""A KServe predictor killed mid-load (the kserve backend): jobs wait for it and finish.

The encoder and generator predictors run as `mossctl predictor` processes on loopback (the
KServe model server); the generator is SIGKILLed while jobs are generating and started again
on the same ports, as KServe restarts a pod behind its Service. Every job must succeed, each
decoder run once to its end.
"""

from __future__ import annotations

import time

import httpx
import pytest

from services.core.settings import Settings
from services.stack import free_port, start_predictor, wait_predictor_ready
from tests.integration.conftest import redis_db
from tests.jobs_env import write_checkpoint
from tests.reliability.faults import start_services
from tests.reliability.test_load_and_faults import model_runs, wav

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
MODEL = "tiny"


def test_jobs_outlast_a_killed_generator_predictor(tmp_path, redis_url) -> None:
    write_checkpoint(tmp_path / "models" / MODEL)
    log = (tmp_path / "predictors.log").open("ab")
    weights = tmp_path / "models" / MODEL
    predictors = {
        role: start_predictor(role, weights, MODEL, log) for role in ("encoder", "generator")
    }
    settings = Settings(
        home=tmp_path / "home",
        port=free_port(),
        redis_url=redis_db(redis_url, 10),
        models=f"{MODEL}={weights}",
        default_model=MODEL,
        inference_backend="kserve",
        kserve_protocol="http",
        kserve_encoder_url=f"127.0.0.1:{predictors['encoder'][1]}",
        kserve_generator_url=f"http://127.0.0.1:{predictors['generator'][1]}",
        heartbeat_s=1.0,
    )
    stack = None
    try:
        for process, http, _ in predictors.values():
            wait_predictor_ready(http, MODEL, process)
        stack = start_services(settings)
        stack.wait_ready()
        headers = {"Authorization": f"Bearer {stack.api_key}"}
        with httpx.Client(base_url=stack.url, headers=headers, timeout=30) as client:
            ids = []
            for index in range(5):
                response = client.post(
                    "/v1/jobs",
                    files={"file": ("a.wav", wav(index), "audio/wav")},
                    data={"task": "caption", "max_new_tokens": "32"},
                )
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # until generation is under way
                if any(client.get(f"/v1/jobs/{i}").json()["stage"] == "generate" for i in ids):
                    break
                time.sleep(0.1)
            process, http, grpc = predictors["generator"]
            process.kill()
            process.wait(10)
            time.sleep(3)  # down for a while: the workers meet refused connections
            predictors["generator"] = start_predictor(
                "generator", weights, MODEL, log, (http, grpc)
            )
            wait_predictor_ready(http, MODEL, predictors["generator"][0])
            jobs = []
            for job_id in ids:
                job = client.get(f"/v1/jobs/{job_id}").json()
                while (
                    job["status"] not in ("succeeded", "failed")
                    and time.monotonic() < deadline + 120
                ):
                    job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
                jobs.append(job)
        assert [j["status"] for j in jobs] == ["succeeded"] * len(ids), [
            j.get("error") for j in jobs
        ]
        runs = model_runs(stack.logs)
        assert all(len(runs[i]["generated"]) == 1 for i in ids), {i: runs.get(i) for i in ids}
    finally:
        if stack is not None:
            stack.stop()
        for process, _, _ in predictors.values():
            process.terminate()
            process.wait(20)
