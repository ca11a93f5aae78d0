"""Real KServe predictor processes on loopback, and jobs through them (MOSS_INFERENCE_BACKEND=
kserve) over REST and gRPC; the answers must equal the local backend's for the same weights.

The test process imports neither `kserve` nor `tritonclient.grpc`: predictors and workers run as
subprocesses (the two libraries cannot share a process).
"""

from __future__ import annotations

import io
import subprocess
import sys

import httpx
import numpy as np
import pytest

from services.core.jobstore import Principal
from services.core.settings import Settings
from services.jobs.stages import encode_job, generate_job
from services.jobs.submit import submit_job
from services.stack import LocalStack, free_port, start_predictor, wait_predictor_ready
from tests.audio_files import encode, stereo_tone
from tests.integration.conftest import redis_db
from tests.integration.test_stack import submit, wait
from tests.jobs_env import make_context, write_checkpoint

pytestmark = pytest.mark.integration
MODEL = "tiny"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("kserve-home")
    write_checkpoint(home / "models" / MODEL)
    return home


@pytest.fixture(scope="module")
def predictors(home):
    log = (home / "predictors.log").open("wb")
    started = {
        role: start_predictor(role, home / "models" / MODEL, MODEL, log)
        for role in ("encoder", "generator")
    }
    try:
        for process, http, _ in started.values():
            wait_predictor_ready(http, MODEL, process)
        yield {role: {"http": http, "grpc": grpc} for role, (_, http, grpc) in started.items()}
    finally:
        for process, _, _ in started.values():
            process.terminate()
            process.wait(20)


@pytest.fixture(scope="module", params=["http", "grpc"])
def kserve_api(request, home, predictors, redis_url, mlflow_uri):
    protocol = request.param
    settings = Settings(
        home=home / protocol,
        port=free_port(),
        redis_url=redis_db(redis_url, 8),  # apart from other modules' queues (the session stack: 5)
        mlflow_uri=mlflow_uri,
        models=f"{MODEL}={home / 'models' / MODEL}",
        default_model=MODEL,
        inference_backend="kserve",
        kserve_protocol=protocol,
        kserve_encoder_url=f"127.0.0.1:{predictors['encoder'][protocol]}",
        kserve_generator_url=f"http://127.0.0.1:{predictors['generator'][protocol]}",
        heartbeat_s=0.5,
    )
    stack = LocalStack(settings)
    stack.start()
    try:
        stack.wait_ready()
        with httpx.Client(
            base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30
        ) as client:
            yield client
    finally:
        stack.stop()


def wav(seconds: float, freq: float) -> bytes:
    return encode(*stereo_tone(seconds, freq=freq), 44_100, "wav")


def local_result(home, data: bytes, task: str, prompt: str | None, max_new_tokens: int) -> dict:
    """The same job with the local backend, run with the plain functions on the same weights."""
    ctx = make_context(home / "local")
    ctx.settings.models = f"{MODEL}={home / 'models' / MODEL}"
    job = submit_job(
        ctx, Principal("k", "t", ("jobs",)), io.BytesIO(data), len(data), task, prompt,
        MODEL, max_new_tokens, 0.0,
    )  # fmt: skip
    assert encode_job(ctx, job.id) and generate_job(ctx, job.id)
    return ctx.store.get_job(job.id).result


def test_metadata_lists_the_tensors(predictors) -> None:
    encoder = httpx.get(f"http://127.0.0.1:{predictors['encoder']['http']}/v2/models/{MODEL}")
    generator = httpx.get(f"http://127.0.0.1:{predictors['generator']['http']}/v2/models/{MODEL}")
    assert [t["name"] for t in encoder.json()["inputs"]] == ["waveform"]
    assert [t["name"] for t in encoder.json()["outputs"]] == ["features", "taps"]
    names = {t["name"] for t in generator.json()["inputs"]}
    assert {"features", "taps", "instruction", "max_new_tokens", "temperature"} <= names
    outputs = [t["name"] for t in generator.json()["outputs"]]
    assert outputs == ["text", "token_ids", "prompt_tokens"]


def test_bad_tensor_is_a_4xx_with_a_message(predictors) -> None:
    url = f"http://127.0.0.1:{predictors['encoder']['http']}/v2/models/{MODEL}/infer"
    body = {"inputs": [{"name": "waveform", "datatype": "FP32", "shape": [3], "data": [0, 0, 0]}]}
    response = httpx.post(url, json=body)
    assert response.status_code == 400 and "waveform must hold" in response.text


def test_generator_takes_a_waveform_instead_of_features(predictors) -> None:
    url = f"http://127.0.0.1:{predictors['generator']['http']}/v2/models/{MODEL}/infer"
    wave = (0.3 * np.sin(np.arange(16_000) * 2 * np.pi * 440 / 16_000)).round(4).tolist()
    body = {
        "inputs": [
            {"name": "waveform", "datatype": "FP32", "shape": [len(wave)], "data": wave},
            {"name": "instruction", "datatype": "BYTES", "shape": [1], "data": ["Describe it."]},
            {"name": "max_new_tokens", "datatype": "INT32", "shape": [1], "data": [5]},
        ]
    }
    response = httpx.post(url, json=body, timeout=60)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert 1 <= outputs["token_ids"]["shape"][0] <= 5 and response.json()["model_version"]


def test_rest_answers_in_the_binary_extension_when_asked_and_json_otherwise(predictors) -> None:
    """The REST hop's cost was the encoder answering JSON (every float as text) to clients that
    asked for binary outputs."""
    import tritonclient.http as triton

    wave = (0.1 * np.random.default_rng(0).standard_normal(32_000)).astype(np.float32)
    item = triton.InferInput("waveform", [wave.size], "FP32")
    item.set_data_from_numpy(wave, binary_data=True)
    client = triton.InferenceServerClient(f"127.0.0.1:{predictors['encoder']['http']}")
    binary = client.infer(
        MODEL,
        [item],
        outputs=[triton.InferRequestedOutput(n, binary_data=True) for n in ("features", "taps")],
    )
    assert all("data" not in o for o in binary.get_response()["outputs"])  # all in the body
    as_json = client.infer(
        MODEL,
        [item],
        outputs=[triton.InferRequestedOutput(n, binary_data=False) for n in ("features", "taps")],
    )
    assert all("data" in o for o in as_json.get_response()["outputs"])
    np.testing.assert_array_equal(binary.as_numpy("features"), as_json.as_numpy("features"))
    assert binary.as_numpy("taps").shape[1:] == binary.as_numpy("features").shape


def test_predictor_with_no_checkpoint_exits_with_one_line(tmp_path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "services.cli", "predictor", "encoder", "--model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0 and "not a MOSS-Audio checkpoint" in run.stderr


@pytest.mark.parametrize(("task", "prompt"), [("caption", None), ("ask", "What happens at 1 s?")])
def test_job_through_kserve_equals_the_local_backend(kserve_api, home, task, prompt) -> None:
    data = wav(2.0, freq=523.0 if task == "caption" else 311.0)
    fields = {"task": task, "max_new_tokens": "12", **({"prompt": prompt} if prompt else {})}
    job = wait(kserve_api, submit(kserve_api, data, **fields)["id"], timeout=120)
    assert job["status"] == "succeeded", job
    answer = {k: v for k, v in job["result"].items() if v is not None}
    local = local_result(home, data, task, prompt, 12)
    # The same weights answered (the digest); the local backend also knows the model's name.
    assert answer.pop("model")["digest"] == local.pop("model")["digest"]
    assert answer["text"] and answer == local
