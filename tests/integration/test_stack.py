"""The whole platform as real processes: Valkey, the gateway, Celery workers, SQLite, storage.

One stack per session (the `stack` fixture in conftest.py: services.stack.LocalStack, the code
behind `mossctl up`); workers are stopped, killed and restarted inside tests to check that no
accepted job is lost.
"""

from __future__ import annotations

import hashlib
import io
import json
import time

import httpx
import pytest

from services.core.settings import Settings
from tests.audio_files import encode, stereo_tone

pytestmark = pytest.mark.integration


def clip(seconds: float = 2.0, freq: float = 440.0) -> bytes:
    return encode(*stereo_tone(seconds, freq=freq), 44_100, "mp3")


def submit(api, data: bytes, **fields) -> dict:
    response = api.post(
        "/v1/jobs",
        files={"file": ("clip.mp3", data, "audio/mpeg")},
        data={"task": "caption", "max_new_tokens": "8", **fields},
    )
    assert response.status_code == 202, response.text
    return response.json()


def wait(api, job_id: str, until=("succeeded", "failed", "cancelled"), timeout=90.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in until if isinstance(until, tuple) else until(job):
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} still {job['status']}/{job['stage']} after {timeout} s")


def test_submit_over_http_gives_a_result(api) -> None:
    job = wait(api, submit(api, clip())["id"])
    assert job["status"] == "succeeded", job
    assert job["result"]["text"] and job["progress"] == 1.0 and job["stage"] == "done"
    assert job["timings"]["encode"]["seconds"] > 0 and job["timings"]["generate"]["seconds"] > 0


def test_worker_logs_name_the_job(api, stack) -> None:
    job = wait(api, submit(api, clip(1.0, freq=523.0))["id"])
    assert job["status"] == "succeeded"
    for queue in ("encode", "generate"):
        # Celery writes "succeeded" after the task returns, which is after the job store says so:
        # read the log until the line is there (or give up after a while).
        deadline = time.monotonic() + 15.0
        while True:
            lines = (stack.logs / f"worker-{queue}.log").read_text().splitlines()
            mine = [line for line in lines if job["id"] in line]
            if any("succeeded" in line for line in mine) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert any("received" in line for line in mine), f"{queue} log never names {job['id']}"
        assert any("succeeded" in line for line in mine), f"{queue} log never says it succeeded"


def test_metrics_show_queues_stage_latency_tokens_and_audio_seconds(api) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    job = wait(api, submit(api, clip(1.0, freq=587.0))["id"])
    assert job["status"] == "succeeded"
    text = api.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for stage in ("encode", "generate"):
        assert samples[("moss_stage_duration_seconds_count", (("stage", stage),))] >= 1
        assert samples[("moss_stage_duration_seconds_sum", (("stage", stage),))] > 0
        assert samples[("moss_audio_seconds_total", (("stage", stage),))] >= 1.0
    assert samples[("moss_generated_tokens_total", ())] >= 1
    for queue in ("encode", "encode.high", "generate", "generate.high", "pipelines"):
        assert ("moss_queue_depth", (("queue", queue),)) in samples
    assert samples[("moss_jobs", (("status", "succeeded"),))] >= 1


def test_a_three_minute_clip_is_transcribed_whole(api) -> None:
    """Cut into segments of at most MOSS_MAX_SEGMENT_SECONDS (120 s), generated in parallel and
    joined: every second of the clip reaches the decoder, and the transcript spans it all."""
    data = encode(*stereo_tone(180.0, freq=250.0), 44_100, "flac")
    job = wait(api, submit(api, data, task="transcribe_timestamps")["id"], timeout=300)
    assert job["status"] == "succeeded", job
    assert abs(job["audio_seconds"] - 180.0) < 0.5
    # 12.5 audio tokens a second, plus time markers and the instruction, over all segments.
    assert job["result"]["usage"]["prompt_tokens"] >= 180 * 12.5
    transcript = api.get(f"/v1/jobs/{job['id']}/transcript").json()
    assert abs(transcript["duration"] - 180.0) < 0.5
    assert transcript["segments"][0]["start"] == 0.0
    assert transcript["segments"][-1]["end"] == transcript["duration"]
    srt = api.get(f"/v1/jobs/{job['id']}/transcript", params={"format": "srt"}).text
    assert "00:03:00,000" in srt  # the last cue ends at the clip's end


def test_second_job_on_the_same_audio_hits_the_feature_cache(api) -> None:
    data = clip(1.5, freq=330.0)
    first = wait(api, submit(api, data)["id"])
    second = wait(api, submit(api, data, task="ask", prompt="Is there speech?")["id"])
    assert first["status"] == second["status"] == "succeeded"
    assert first["timings"]["encode"]["cache_hit"] is False
    assert second["timings"]["encode"]["cache_hit"] is True


def test_cancel_stops_generation_mid_way(api) -> None:
    job = submit(api, clip(), max_new_tokens="4000")
    wait(api, job["id"], until=lambda j: j["stage"] == "generate" and j["progress"] > 0.12)
    response = api.delete(f"/v1/jobs/{job['id']}")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    # The generator lets go of the job: the next one finishes long before 4000 tokens would.
    follow = wait(api, submit(api, clip(1.0, freq=660.0))["id"], timeout=60)
    assert follow["status"] == "succeeded"
    final = api.get(f"/v1/jobs/{job['id']}").json()
    assert final["status"] == "cancelled" and final["result"] is None and final["progress"] < 1


def test_tenants_are_isolated(api, stack) -> None:
    other = api.post("/v1/keys", json={"tenant": "someone-else"}).json()["key"]
    job = submit(api, clip(0.5))
    response = httpx.get(
        f"{stack.url}/v1/jobs/{job['id']}", headers={"Authorization": f"Bearer {other}"}
    )
    assert response.status_code == 404


def test_bad_upload_over_http(api) -> None:
    response = api.post(
        "/v1/jobs", files={"file": ("x.mp3", b"garbage" * 100)}, data={"task": "caption"}
    )
    assert response.status_code == 415 and response.json()["error"]["code"] == "not_audio"


def test_killed_worker_mid_job_then_new_worker_finishes_it(api, stack) -> None:
    job = submit(api, clip(), max_new_tokens="1500")
    wait(api, job["id"], until=lambda j: j["stage"] == "generate" and j["progress"] > 0.12)
    stack.stop_workers("generate", kill=True)  # SIGKILL: no goodbye, the message stays unacked
    time.sleep(1)
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"
    stack.start_worker("generate")  # the same slot, so the same node name
    done = wait(api, job["id"], timeout=120)
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 3  # encode once, generate twice
    # Given back by the restarted worker itself (or, if the gateway's ping came first, by the
    # sweeper that saw the worker gone), not by the heartbeat timeout.
    logs = "".join((stack.logs / f).read_text() for f in ("worker-generate.log", "gateway.log"))
    assert f"re-enqueued generate of job {job['id']}" in logs


def test_job_accepted_while_workers_are_down_completes_later(api, stack) -> None:
    stack.stop_workers()
    job = submit(api, clip(1.0, freq=880.0))
    time.sleep(1)
    assert api.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"
    assert api.get("/readyz").status_code == 503
    stack.start_worker("encode")
    stack.start_worker("generate")
    done = wait(api, job["id"], timeout=120)
    assert done["status"] == "succeeded", done


def test_a_high_priority_job_overtakes_the_normal_queue(api, stack) -> None:
    stack.stop_workers("encode")
    normal = [submit(api, clip(0.5, freq=200.0 + 10 * i))["id"] for i in range(8)]
    high = submit(api, clip(0.5, freq=190.0), priority="high")
    assert high["priority"] == "high"
    stack.start_worker("encode")
    jobs = {job_id: wait(api, job_id, timeout=180) for job_id in [*normal, high["id"]]}
    assert {job["status"] for job in jobs.values()} == {"succeeded"}
    order = sorted(jobs, key=lambda j: jobs[j]["timings"]["encode"]["started_at"])
    # Submitted last, encoded among the first the worker takes (it takes 4 at once).
    assert order.index(high["id"]) < stack.settings.encoder_concurrency, order


def test_a_webhook_and_a_purge_through_the_workers(api, stack) -> None:
    from tests.integration.test_webhooks import Receiver, verify

    receiver = Receiver()
    try:
        secret = api.post("/v1/keys/me/webhook-secret").json()["webhook_secret"]
        data = clip(1.0, freq=1234.0)
        job = submit(api, data, webhook_url=f"{receiver.url}/done")
        (request,) = receiver.wait_for(1, timeout=120)
    finally:
        receiver.server.shutdown()
    assert verify(secret, request["headers"], request["body"])
    sent = json.loads(request["body"])
    assert sent["type"] == "job.succeeded" and sent["data"]["job"]["result"]["text"]
    done = api.get(f"/v1/jobs/{job['id']}").json()
    assert done["webhook"]["deliveries"][0]["status"] == "delivered"
    objects = stack.settings.resolved_storage_dir
    sha = hashlib.sha256(data).hexdigest()
    assert list((objects / "audio").rglob(job["id"]))
    assert list((objects / "features").rglob(f"{sha}-*"))
    purged = api.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"}).json()
    assert purged["purged_at"] and purged["result"] is None
    assert not list((objects / "audio").rglob(job["id"])), "audio left behind"
    assert not list((objects / "features").rglob(f"{sha}-*")), "features left behind"


def test_a_pipeline_run_goes_through_the_queue_to_the_pipeline_worker(api, stack) -> None:
    """The gateway only leaves a message; the pipeline worker runs it, and the run's record
    and its log (through the gateway, from the object store) say what happened."""
    if not stack.workers.get("pipelines"):  # an earlier test stopped every worker
        stack.start_worker("pipelines")
    response = api.post("/v1/pipelines/evaluate/runs", json={"params": {"no_such_param": 1}})
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["mode"] == "local" and run["log"] == f"/v1/pipelines/runs/{run['run_id']}/log"
    deadline = time.monotonic() + 120
    while (state := api.get(run["url"]).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, f"the pipeline worker did not run it: {state}"
        time.sleep(0.5)
    assert state["status"] == "failed" and state["error"]["code"] == "pipeline_failed"
    assert "has no parameter no_such_param" in state["error"]["message"]
    assert "has no parameter no_such_param" in api.get(run["log"]).text
    unknown = api.post("/v1/pipelines/nope/runs", json={"params": {}})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_the_official_openai_client_lists_the_models_of_the_running_stack(stack) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key)
    assert "tiny" in [m.id for m in client.models.list()]


def read_events(api, job_id: str, last_event_id: str | None = None) -> list[tuple]:
    """(id, event, data) of a job's server-sent events, up to and including `done`."""
    import json

    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events, current = [], {}
    with api.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=90) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if current:
                    events.append(
                        (current.get("id"), current["event"], json.loads(current["data"]))
                    )
                    current = {}
                continue
            name, _, value = line.partition(": ")
            current[name] = value
    return events


def test_job_events_stream_the_stages_and_end_with_the_result(api) -> None:
    job_id = submit(api, clip(1.5, freq=700.0))["id"]
    events = read_events(api, job_id)
    kinds = [kind for _, kind, _ in events]
    assert kinds[-1] == "done" and events[-1][2]["status"] == "succeeded"
    assert events[-1][2]["result"]["text"] == wait(api, job_id)["result"]["text"]
    stages = [data.get("stage") for _, kind, data in events if kind == "change"]
    assert "encode" in stages and "generate" in stages
    ids = [entry for entry, kind, _ in events if kind != "done"]
    assert ids == sorted(ids, key=lambda e: tuple(map(int, e.split("-"))))  # in order
    # Resumable: after the second event, exactly the events that followed it, then done.
    resumed = read_events(api, job_id, last_event_id=ids[1])
    assert [e[0] for e in resumed[:-1]] == ids[2:] and resumed[-1][1] == "done"
    # Another tenant cannot open it: 404, as for an unknown id.
    other = api.post("/v1/keys", json={"tenant": "events-elsewhere"}).json()["key"]
    foreign = api.get(f"/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {other}"})
    assert foreign.status_code == 404


def test_the_official_openai_client_transcribes_through_jobs(api, stack, tmp_path) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, timeout=120)
    path = tmp_path / "speech.mp3"
    path.write_bytes(clip(1.5, freq=330.0))

    def create(**kwargs):
        with path.open("rb") as handle:
            return client.audio.transcriptions.create(model="tiny", file=handle, **kwargs)

    plain = create()  # json: a Transcription with .text
    assert isinstance(plain.text, str)
    assert create(response_format="text") == plain.text  # same audio, same task, greedy
    verbose = create(response_format="verbose_json")
    assert abs(verbose.duration - 1.5) < 0.1 and isinstance(verbose.segments, list)
    for segment in verbose.segments:
        assert 0.0 <= segment.start <= segment.end <= verbose.duration + 1e-6
    subtitles = create(response_format="vtt")
    assert subtitles.startswith("WEBVTT")
    # Each request was a job of this tenant.
    tasks = [j["task"] for j in api.get("/v1/jobs", params={"limit": 10}).json()["jobs"]]
    assert "transcribe_timestamps" in tasks and "transcribe" in tasks
    events = list(create(stream=True))
    assert events[-1].type == "transcript.text.done" and events[-1].text == plain.text
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    assert "".join(deltas) == plain.text
    with pytest.raises(openai.UnprocessableEntityError):
        client.audio.transcriptions.create(model="whisper-1", file=path.open("rb"))
    segments = client.audio.transcriptions.create(
        model="tiny", file=path.open("rb"), response_format="verbose_json",
        timestamp_granularities=["segment"],
    )  # fmt: skip
    assert segments.segments
    with pytest.raises(openai.UnprocessableEntityError, match="supports `segment` only"):
        client.audio.transcriptions.create(
            model="tiny", file=path.open("rb"), response_format="verbose_json",
            timestamp_granularities=["word"],
        )  # fmt: skip
    with pytest.raises(openai.UnprocessableEntityError, match="unknown form field"):
        client.audio.transcriptions.create(
            model="tiny", file=path.open("rb"), extra_body={"chunking_strategy": "auto"}
        )


def test_the_openai_backend_generates_on_another_platforms_chat_route(api, stack, tmp_path) -> None:
    """MOSS_INFERENCE_BACKEND=openai, pointed at this stack's /v1 (a separate server process, as
    vLLM would be): the same job gives the same answer as the stack gives it directly."""
    from services.core.jobstore import JobStore, Principal
    from services.core.storage import LocalStorage
    from services.inference import make_backend
    from services.jobs.context import Context
    from services.jobs.stages import encode_job, generate_job
    from services.jobs.submit import submit_job
    from tests.jobs_env import Recorder

    data = clip(1.5, freq=370.0)
    direct = wait(api, submit(api, data)["id"])  # caption, 8 tokens, greedy
    settings = Settings(
        home=tmp_path,
        inference_backend="openai",
        openai_base_url=f"{stack.url}/v1",
        openai_api_key=stack.api_key,
        openai_model="tiny",
        default_model="tiny",
        models_dir=stack.settings.resolved_models_dir,
    )
    ctx = Context(
        settings=settings,
        store=JobStore.connect(settings.resolved_database_url),
        storage=LocalStorage(settings.resolved_storage_dir),
        enqueue=Recorder(),
        backend=make_backend(settings),
    )
    job = submit_job(
        ctx, Principal("k", "elsewhere", ("jobs",)), io.BytesIO(data), len(data), "caption",
        None, None, 8, 0.0,
    )  # fmt: skip
    assert encode_job(ctx, job.id) and generate_job(ctx, job.id)
    through = ctx.store.get_job(job.id)
    assert through.status == "succeeded", through.error
    assert through.result["text"] == direct["result"]["text"]
    assert through.result["finish_reason"] == direct["result"]["finish_reason"]
    assert through.result["usage"] == direct["result"]["usage"]
    assert through.result["usage"]["prompt_tokens"] > 15  # the audio went through
    ctx.backend.close()
    # ... and the stack saw it as an ordinary chat job of its own
    recent = api.get("/v1/jobs", params={"limit": 5}).json()["jobs"]
    assert any(j["task"] == "chat" and j["status"] == "succeeded" for j in recent)


def test_the_official_openai_client_chats_about_audio(api, stack) -> None:
    import base64

    import openai

    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key=stack.api_key, timeout=120)
    audio = base64.b64encode(clip(1.2, freq=880.0)).decode()
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What do you hear?"},
                {"type": "input_audio", "input_audio": {"data": audio, "format": "mp3"}},
            ],
        },
    ]
    reply = client.chat.completions.create(model="tiny", messages=messages, max_tokens=6)
    choice = reply.choices[0]
    once = {"Idempotency-Key": f"chat-{reply.id}"}
    first = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, extra_headers=once
    )
    again = client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=6, extra_headers=once
    )
    assert again.id == first.id != reply.id  # a retry is answered from the first job
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert 1 <= reply.usage.completion_tokens <= 6 and reply.usage.prompt_tokens > 15  # audio
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    stream = client.chat.completions.create(
        model="tiny",
        messages=messages,
        max_completion_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == choice.message.content  # same audio, same prompt, greedy
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason

    with pytest.raises(openai.UnprocessableEntityError):  # one turn only: said, not guessed
        client.chat.completions.create(
            model="tiny",
            messages=[*messages, {"role": "assistant", "content": "x"}, messages[1]],
        )
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="tiny", messages=[messages[0]], top_p=0.5)
    tasks = [j["task"] for j in api.get("/v1/jobs", params={"limit": 5}).json()["jobs"]]
    assert tasks[:2] == ["chat", "chat"]
