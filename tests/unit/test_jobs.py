"""The job path as plain functions (no broker): submit -> encode -> generate, errors, cache."""

from __future__ import annotations

import io
import os
import threading
import time
from types import SimpleNamespace

import pytest

from services.core.errors import ApiError
from services.core.jobstore import Principal
from services.jobs.stages import encode_job, generate_job
from services.jobs.submit import submit_job
from services.jobs.sweeper import recover_own, sweep
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context, write_checkpoint

ACME = Principal("k1", "acme", ("jobs",))


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_checkpoint(home / "models" / "tiny")
    return home


@pytest.fixture
def ctx(home):
    return make_context(home)


def wav(seconds: float = 2.0, freq: float = 440.0) -> bytes:
    return encode(*stereo_tone(seconds, freq=freq), 44_100, "wav")


def submit(ctx, data: bytes, task: str = "caption", prompt: str | None = None, **kw):
    return submit_job(
        ctx,
        ACME,
        io.BytesIO(data),
        len(data),
        task,
        prompt,
        kw.get("model"),
        kw.get("max_new_tokens", 6),
        kw.get("temperature", 0.0),
    )


def objects(ctx) -> list[str]:
    root = ctx.settings.resolved_storage_dir
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_submit_encode_generate(ctx) -> None:
    job = submit(ctx, wav())
    assert ctx.enqueue.calls == [("encode", job.id)]
    assert ctx.storage.exists(job.audio_key) and job.audio_seconds == pytest.approx(2.0, abs=0.01)
    assert encode_job(ctx, job.id)
    assert not encode_job(ctx, job.id)  # a redelivered task does nothing
    stored = ctx.store.get_job(job.id)
    assert stored.stage == "encoded" and ctx.storage.exists(stored.features_key)
    assert generate_job(ctx, job.id)
    done = ctx.store.get_job(job.id)
    assert done.status == "succeeded" and done.progress == 1.0
    assert isinstance(done.result["text"], str) and done.result["text"]
    assert done.timings["encode"]["cache_hit"] is False and done.timings["generate"]["seconds"] > 0


def test_second_job_on_the_same_audio_reuses_features(ctx) -> None:
    data = wav(1.5, freq=300.0)
    first, second = submit(ctx, data), submit(ctx, data, task="ask", prompt="What is it?")
    encode_job(ctx, first.id)
    encode_job(ctx, second.id)
    a, b = ctx.store.get_job(first.id), ctx.store.get_job(second.id)
    assert a.features_key == b.features_key
    assert a.timings["encode"]["cache_hit"] is False and b.timings["encode"]["cache_hit"] is True
    assert generate_job(ctx, second.id)


@pytest.mark.parametrize("shared", [False, True])
def test_the_feature_cache_is_per_tenant_unless_the_operator_shares_it(home, shared) -> None:
    """A hit would tell tenant B that tenant A sent this audio (cache_hit, and a faster job)."""
    ctx = make_context(home, shared_cache=shared)
    data = wav(1.5, freq=320.0 + 7 * shared)
    first = submit(ctx, data)
    globex = Principal("k2", "globex", ("jobs",))
    second = submit_job(ctx, globex, io.BytesIO(data), len(data), "caption", None, None, 6, 0.0)
    encode_job(ctx, first.id)
    encode_job(ctx, second.id)
    a, b = ctx.store.get_job(first.id), ctx.store.get_job(second.id)
    assert b.timings["encode"]["cache_hit"] is shared
    assert (a.features_key == b.features_key) is shared
    assert generate_job(ctx, second.id) and ctx.store.get_job(second.id).status == "succeeded"


def test_caption_and_transcription_of_a_short_clip_share_features(ctx) -> None:
    """A clip shorter than one transcription segment is encoded whole for both tasks."""
    data = wav(1.5, freq=350.0)
    first, second = submit(ctx, data), submit(ctx, data, task="transcribe")
    encode_job(ctx, first.id)
    encode_job(ctx, second.id)
    a, b = ctx.store.get_job(first.id), ctx.store.get_job(second.id)
    assert a.features_key == b.features_key
    assert b.timings["encode"]["cache_hit"] is True


def test_long_audio_runs_as_segments_with_offsets(home) -> None:
    ctx = make_context(home, max_segment_seconds=2.0)
    job = submit(ctx, wav(5.0, freq=500.0), task="transcribe_timestamps")
    encode_job(ctx, job.id)
    generate_job(ctx, job.id)
    done = ctx.store.get_job(job.id)
    assert done.status == "succeeded" and "segments" in done.result


def test_whole_clip_tasks_see_the_whole_clip_and_transcription_is_split(home) -> None:
    from services.jobs.features import load_features

    ctx = make_context(home, max_segment_seconds=2.0)
    data = wav(5.0, freq=610.0)
    for task, prompt, count in (("caption", None, 1), ("ask", "What?", 1), ("transcribe", None, 3)):
        job = submit(ctx, data, task=task, prompt=prompt)
        assert encode_job(ctx, job.id)
        stored = ctx.store.get_job(job.id)
        segments, outputs = load_features(ctx.storage.get_bytes(stored.features_key))
        assert len(segments) == count, task
        assert sum(s["duration"] for s in segments) == pytest.approx(5.0, abs=1e-3)
        assert [s["offset"] for s in segments] == sorted(s["offset"] for s in segments)
        assert sum(len(o.features) for o in outputs) >= 62  # every second is encoded
        assert generate_job(ctx, job.id)


def test_a_prompt_that_does_not_fit_the_context_fails_and_says_what_fits(tmp_path) -> None:
    from model import MossAudioProcessor
    from tests.conftest import make_tiny_model

    model = make_tiny_model(seed=5)
    model.config.language_config.max_position_embeddings = 256  # 12.5 tokens/s: ~15 s fit
    model.save_pretrained(tmp_path / "models" / "tiny")
    MossAudioProcessor.from_pretrained(None).save_pretrained(tmp_path / "models" / "tiny")
    ctx = make_context(tmp_path, max_segment_seconds=8.0)
    data = wav(30.0, freq=410.0)
    caption = submit(ctx, data, task="caption")
    assert encode_job(ctx, caption.id)
    assert not generate_job(ctx, caption.id)
    failed = ctx.store.get_job(caption.id)
    assert failed.status == "failed" and failed.error["code"] == "context_exceeded"
    assert "context holds 256 tokens" in failed.error["message"]
    # Transcription is cut into 8 s segments, each of which fits: nothing is dropped.
    transcript = submit(ctx, data, task="transcribe")
    assert encode_job(ctx, transcript.id) and generate_job(ctx, transcript.id)
    assert ctx.store.get_job(transcript.id).status == "succeeded"


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"task": "sing"}, 422, "invalid_task"),
        ({"task": "ask"}, 422, "prompt_required"),
        ({"model": "nope"}, 422, "unknown_model"),
        ({"model": "bad name!"}, 422, "invalid_model"),
        ({"max_new_tokens": 0}, 422, "invalid_max_new_tokens"),
        ({"temperature": 5.0}, 422, "invalid_temperature"),
        ({"data": b"not audio at all" * 100}, 415, "not_audio"),
        ({"data": b""}, 415, "empty_audio"),
    ],
)
def test_bad_input_is_rejected_and_leaves_nothing(ctx, kwargs, status, code) -> None:
    before_objects, (_, before_rows) = objects(ctx), ctx.store.list_jobs("acme")
    data = kwargs.pop("data", wav(0.5))
    with pytest.raises(ApiError) as info:
        submit(ctx, data, **kwargs)
    assert (info.value.status, info.value.code) == (status, code)
    assert objects(ctx) == before_objects
    assert ctx.store.list_jobs("acme")[1] == before_rows


def test_limits(home) -> None:
    ctx = make_context(home, max_audio_seconds=1.0, max_upload_mb=0.05)
    with pytest.raises(ApiError) as info:
        submit(ctx, wav(2.0))
    assert (info.value.status, info.value.code) == (413, "upload_too_large")
    small = encode(*stereo_tone(2.0), 44_100, "mp3")
    with pytest.raises(ApiError) as info:
        submit(ctx, small)
    assert (info.value.status, info.value.code) == (422, "audio_too_long")


def test_cancelled_job_is_not_generated(ctx) -> None:
    job = submit(ctx, wav(1.0))
    encode_job(ctx, job.id)
    assert ctx.store.request_cancel(job.id)
    assert not generate_job(ctx, job.id)
    assert ctx.store.get_job(job.id).status == "cancelled"


def test_sweep_reenqueues_a_dead_workers_stage(home) -> None:
    ctx = make_context(home, sweep_after_s=0)
    job = submit(ctx, wav(1.0))
    assert ctx.store.claim_stage(job.id, "encode")  # a worker took it, then died
    ctx.enqueue.calls.clear()
    actions = sweep(ctx)
    assert (job.id, "encode") in actions
    assert ("encode", job.id) in ctx.enqueue.calls
    assert ctx.store.get_job(job.id).stage == "queued"


def test_a_stage_of_a_worker_that_stopped_answering_is_back_in_seconds(home) -> None:
    """MOSS_SWEEP_AFTER_S is two minutes; a worker that no longer answers a ping loses its
    stage after four quiet heartbeats; one that answers keeps it, and so does one that missed a
    ping while its heartbeat was only a beat or two late (a loaded machine); a restarted worker
    of the same node name gives back what its previous process held, at once."""
    live: set[str] = {"encode-1@a"}
    ctx = make_context(home, sweep_after_s=120, heartbeat_s=0.5)
    ctx.live_workers = lambda: live
    job = submit(ctx, wav(1.0, freq=610.0))
    assert ctx.store.claim_stage(job.id, "encode", "encode-1@a")
    time.sleep(1.0)  # two heartbeats without one
    assert sweep(ctx) == []  # it still answers: a long stage, not a dead worker
    live.clear()
    assert sweep(ctx) == []  # a missed ping, a late beat: not yet dead (its work not done twice)
    time.sleep(1.5)  # four heartbeats and more, without one
    ctx.enqueue.calls.clear()
    assert sweep(ctx) == [(job.id, "encode")] and ("encode", job.id) in ctx.enqueue.calls
    assert ("encode", job.id) in ctx.enqueue.fronts  # ahead of any backlog: it waited once
    assert ctx.store.claim_stage(job.id, "encode", "encode-1@a")
    restarted = make_context(home, worker="encode-1@a")
    assert recover_own(restarted) == [(job.id, "encode")]
    assert ("encode", job.id) in restarted.enqueue.fronts


class SlowLoading:
    """A backend whose first model load takes a while (a large checkpoint from the registry)."""

    def __init__(self, backend, seconds: float) -> None:
        self.backend, self.seconds = backend, seconds

    def lookup(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.backend.lookup(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.backend, name)


@pytest.mark.parametrize("stage", ["encode", "generate"])
def test_a_stage_loading_its_model_is_not_swept_as_dead(home, stage) -> None:
    ctx = make_context(home, sweep_after_s=1)
    job = submit(ctx, wav(1.0, freq=523.0))
    if stage == "generate":
        assert encode_job(ctx, job.id)
    ctx.backend = SlowLoading(ctx.backend, seconds=2.5)
    work = {"encode": encode_job, "generate": generate_job}[stage]
    runner = threading.Thread(target=work, args=(ctx, job.id))
    runner.start()
    swept = []
    while runner.is_alive():
        swept += sweep(ctx)
        time.sleep(0.2)
    runner.join()
    assert (job.id, stage) not in swept  # the stage was never handed to a second worker
    assert ctx.store.get_job(job.id).attempts == (1 if stage == "encode" else 2)


def test_generation_past_the_time_limit_fails_the_job(home) -> None:
    ctx = make_context(home, task_time_limit_s=0)
    job = submit(ctx, wav(1.0, freq=770.0), max_new_tokens=4000)
    encode_job(ctx, job.id)
    assert not generate_job(ctx, job.id)
    failed = ctx.store.get_job(job.id)
    assert failed.status == "failed" and failed.error["code"] == "timeout"


def test_stale_features_send_the_job_back_to_the_encoder_then_fail(ctx) -> None:
    from services.jobs.features import load_features, pack_features
    from services.jobs.stages import MAX_REENCODES

    job = submit(ctx, wav(1.0, freq=700.0))
    for attempt in range(MAX_REENCODES + 1):
        assert encode_job(ctx, job.id)
        stored = ctx.store.get_job(job.id)
        segments, outputs = load_features(ctx.storage.get_bytes(stored.features_key))
        fake = [SimpleNamespace(offset_seconds=s["offset"], duration_seconds=s["duration"])
                for s in segments]  # fmt: skip
        # Features written by another model version (a rollout between the two stages).
        ctx.storage.put_bytes(stored.features_key, pack_features(fake, outputs, "0ther"))
        assert not generate_job(ctx, job.id)
        after = ctx.store.get_job(job.id)
        if attempt < MAX_REENCODES:
            assert after.status == "queued" and after.stage == "queued"
            assert ctx.enqueue.calls[-1] == ("encode", job.id)
    assert after.status == "failed" and after.error["code"] == "model_version_mismatch"


@pytest.mark.parametrize(("top_k", "same_as_greedy"), [(1, True), (0, False)])
def test_sampling_model_follows_the_checkpoints_generation_config(
    tmp_path, top_k, same_as_greedy
) -> None:
    import json

    checkpoint = write_checkpoint(tmp_path / "models" / "tiny")
    own = {"do_sample": True, "temperature": 5.0, "top_p": 1.0, "top_k": top_k}
    (checkpoint / "generation_config.json").write_text(json.dumps(own))
    ctx = make_context(tmp_path)
    texts = {}
    for sampling in ("greedy", "model"):
        job = submit_job(
            ctx, ACME, io.BytesIO(wav(1.0)), len(wav(1.0)), "caption", None, None, 12, 0.0, sampling
        )
        assert job.params["sampling"] == sampling
        assert encode_job(ctx, job.id) and generate_job(ctx, job.id)
        texts[sampling] = ctx.store.get_job(job.id).result["text"]
    # top_k 1 is argmax whatever the temperature; temperature 5 over the whole vocabulary is not.
    assert (texts["model"] == texts["greedy"]) is same_as_greedy
    with pytest.raises(ApiError) as info:
        submit_job(
            ctx, ACME, io.BytesIO(wav(1.0)), len(wav(1.0)), "caption", None, None, 4, 0.0, "hot"
        )
    assert info.value.code == "invalid_sampling"


def test_an_answer_cut_by_max_new_tokens_says_so(ctx) -> None:
    from services.inference import ran_out

    job = submit(ctx, wav(1.0, freq=880.0), max_new_tokens=3)
    assert encode_job(ctx, job.id) and generate_job(ctx, job.id)
    result = ctx.store.get_job(job.id).result
    # Random tiny weights never pick one of the two stop ids among 152k in 3 steps.
    assert result["finish_reason"] == "length"
    assert ran_out([5, 6, 7], 3) and not ran_out([5, 151645], 3) and not ran_out([5, 6, 151645], 3)
