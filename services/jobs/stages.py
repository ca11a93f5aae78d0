"""The two stages a worker runs: encode (audio -> features) and generate (features -> answer).

Each claims its stage in the job store first (a redelivered task finds it taken), reports a
heartbeat while it runs, and finishes through services.core.jobstate.advance, which enqueues
what comes next.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager

from model.answer import assemble_answer
from model.audio import AudioDecodeError
from model.audio_sandbox import load_audio_isolated
from model.segment import Segment, split_audio
from model.tasks import instruction_for, segment_seconds_for

from ..core.jobstate import Stage, advance
from ..core.modelref import ModelSpec, describe
from ..core.storage import ObjectNotFound
from ..inference import ContextExceeded, StaleFeatures
from .context import Context
from .features import (
    cache_plan,
    cache_scope,
    features_key,
    load_features,
    metadata,
    pack_features,
)

log = logging.getLogger("moss.jobs")
# How often a generating job reports progress and checks for cancellation: each is a job-store
# round trip (and a notice), so 4 a second per job cost the CPU of a small machine ~1/4 core
# with 32 jobs running.
PROGRESS_EVERY_S = 1.0


def encode_job(ctx: Context, job_id: str) -> bool:
    """Audio -> segments -> encoder (local or a predictor) -> features in the object store.

    Features are content-addressed (audio digest + weights digest), so a second job on the same
    audio skips the encoder. Returns True when the generator should run next, False when this
    delivery had nothing to do (stage already taken, job cancelled or gone).
    """
    if not ctx.store.claim_stage(job_id, "encode", ctx.worker):
        return False
    # The heartbeat covers the whole stage, model loading included: a first load from the
    # registry can outlast MOSS_SWEEP_AFTER_S, and the sweeper would give the stage to another
    # worker.
    with heartbeat(ctx, job_id):
        return _encode_claimed(ctx, job_id, started=time.monotonic())


def _observe(ctx: Context, stage: str, started: float, audio_seconds: float, tokens: int = 0):
    """A stage that moved its job on: its latency and what it did (/metrics)."""
    if ctx.metrics is not None:
        ctx.metrics.stage(stage, time.monotonic() - started, audio_seconds, tokens)


def _encode_claimed(ctx: Context, job_id: str, started: float) -> bool:
    job = ctx.store.get_job(job_id)
    served = ctx.backend.lookup(job.model)
    params = {k: v for k, v in (job.params or {}).items() if k != "model_version"}
    if served.registry_version:  # pin it: the generator must use the same version
        params["model_version"] = served.registry_version
    ctx.store.set_params(job_id, params)
    plan = segment_seconds_for(job.task, ctx.settings.max_segment_seconds)
    lookup = cache_plan(plan, job.audio_seconds)
    scope = cache_scope(job.tenant, ctx.settings.shared_cache)
    key = features_key(job.audio_sha256, served.version, lookup, scope) if served.version else None
    cached = key is not None and ctx.storage.exists(key)
    if not cached:
        try:
            audio = load_audio_isolated(
                ctx.storage.get_bytes(job.audio_key),
                max_seconds=ctx.settings.max_audio_seconds,
                limits=ctx.settings.decode_limits,
            )
        except AudioDecodeError as exc:  # the gateway saw only a prefix; the rest is bad
            ctx.store.fail(job_id, exc.code, exc.message)
            return False
        if plan is None:
            segments = [Segment(0, len(audio), audio)]
        else:
            segments = split_audio(audio, max_seconds=plan)
        version, outputs = ctx.backend.encode(served, [s.audio for s in segments])
        # one line per encoder run, with the process: the reliability suite counts them (a job
        # encoded twice is a bug unless the first run's worker died before it could commit)
        log.info("encoded %d segment(s), %.1f s of audio (pid %d)", len(segments),
                 job.audio_seconds, os.getpid())  # fmt: skip
        key = features_key(job.audio_sha256, version, plan if len(segments) > 1 else None, scope)
        ctx.storage.put_bytes(key, pack_features(segments, outputs, version))
    ctx.store.record_timing(job_id, Stage.ENCODE, cache_hit=cached)
    if advance(ctx.store, ctx.enqueue, job_id, Stage.ENCODE, features_key=key, progress=0.1):
        _observe(ctx, "encode", started, job.audio_seconds)
        return True
    if not cached and (ended := ctx.store.get_job(job_id)) is not None and ended.purged_at:
        ctx.storage.delete(key)  # purged while it was encoded: leave nothing of it behind
    return False


def generate_job(ctx: Context, job_id: str) -> bool:
    """Features -> adapter/mergers -> prompt -> decoder (local or a predictor) -> result."""
    if not ctx.store.claim_stage(job_id, "generate", ctx.worker):
        return False
    with heartbeat(ctx, job_id):  # from the claim on, model loading included (see encode_job)
        return _generate_claimed(ctx, job_id, started=time.monotonic())


def _generate_claimed(ctx: Context, job_id: str, started: float) -> bool:
    job = ctx.store.get_job(job_id)
    params = job.params or {}
    served = ctx.backend.lookup(job.model, registry_version=params.get("model_version"))
    try:
        blob = ctx.storage.get_bytes(job.features_key)
    except ObjectNotFound:  # another job on this audio was purged: its features went with it
        return _encode_again(ctx, job_id)
    segments, encoded = load_features(blob)
    features_version = metadata(blob).get("model_version", "")
    instruction = instruction_for(job.task, job.prompt)
    max_new_tokens = int(params.get("max_new_tokens", ctx.settings.max_new_tokens))
    temperature = (
        None  # the model's own generation_config.json
        if params.get("sampling") == "model"
        else float(params.get("temperature", 0.0))
    )
    scope = cache_scope(job.tenant, ctx.settings.shared_cache)
    generations = []
    try:
        for output in encoded:
            generations.append(
                ctx.backend.generate(
                    served,
                    output,
                    instruction,
                    max_new_tokens,
                    temperature,
                    features_version,
                    cache_scope=scope,
                )
            )
    except (StaleFeatures, ContextExceeded) as exc:
        for generation in generations:  # segments already queued would run for nothing
            generation.cancel()
        if isinstance(exc, StaleFeatures):
            return _encode_again(ctx, job_id)
        ctx.store.fail(job_id, "context_exceeded", str(exc).split(": ", 1)[-1])
        return False

    budget = max_new_tokens * len(generations)
    deadline = time.monotonic() + ctx.settings.task_time_limit_s
    timed_out = False
    shown: list[str] = [""] * len(generations)
    while pending := [g for g in generations if not g.done]:
        if pending[0].wait(PROGRESS_EVERY_S):  # returns as soon as it finishes
            continue
        timed_out = time.monotonic() > deadline
        if timed_out or ctx.store.is_cancelled(job_id):
            for generation in generations:
                generation.cancel()  # the engine stops these rows at its next step
            break
        done = sum(max_new_tokens if g.done else g.produced for g in generations)
        ctx.store.heartbeat(job_id, progress=0.1 + 0.9 * done / max(budget, 1))
        shown = _show_text(ctx, job_id, generations, shown)
    try:
        texts = [g.text() for g in generations]
        log.info("generated %d token(s) in %d segment(s) (pid %d)",  # one per decoder run
                 sum(g.produced for g in generations), len(generations), os.getpid())  # fmt: skip
    except StaleFeatures:  # a remote generator changed version after the encoder ran
        return _encode_again(ctx, job_id)
    except ContextExceeded as exc:  # a remote generator checked the context
        ctx.store.fail(job_id, "context_exceeded", str(exc).split(": ", 1)[-1])
        return False
    if timed_out:
        limit = ctx.settings.task_time_limit_s
        ctx.store.fail(job_id, "timeout", f"generation ran past MOSS_TASK_TIME_LIMIT_S ({limit} s)")
        return False
    if ctx.store.is_cancelled(job_id):
        return False
    answer = assemble_answer(
        texts, [s["offset"] for s in segments], timestamps=job.task == "transcribe_timestamps"
    )
    result = answer.as_result()
    # Never cut silently: say when an answer ran into max_new_tokens.
    result["finish_reason"] = "length" if any(g.hit_limit() for g in generations) else "stop"
    result["usage"] = {
        "prompt_tokens": sum(g.prompt_tokens for g in generations),
        "completion_tokens": sum(g.produced for g in generations),
    }
    result["model"] = answered_by(ctx, job.model, served, features_version)
    if not advance(ctx.store, ctx.enqueue, job_id, Stage.GENERATE, result=result):
        return False
    tokens = result["usage"]["completion_tokens"]
    _observe(ctx, "generate", started, job.audio_seconds, tokens)
    return True


def _show_text(ctx: Context, job_id: str, generations, shown: list[str]) -> list[str]:
    """Publish each segment's answer so far when it grew (the job's event stream shows text as
    it is generated), in the form the result will have (thinking apart, trimmed); what was
    shown, for the next call."""
    if ctx.store.events is None:
        return shown
    now = []
    for segment, (generation, before) in enumerate(zip(generations, shown, strict=True)):
        # As the result will read; a character still missing bytes is left for the next call.
        text = assemble_answer([generation.partial()], [0.0]).text.rstrip("\ufffd")
        if text != before:
            ctx.store.events.text(job_id, segment, text)
        now.append(text)
    return now


def answered_by(ctx: Context, ref: str, served, digest: str) -> dict:
    """Which model version answered, and what it was trained for (never fails the job)."""
    info: dict = {"ref": ref, "digest": digest or None, "registry_version": served.registry_version}
    if isinstance(served.handle, ModelSpec):
        try:
            info.update(describe(served.handle, ctx.settings))
        except Exception:  # the registry briefly away: the answer stands without the label
            log.warning("could not describe model %s", ref, exc_info=True)
    return info


MAX_REENCODES = 3


def _encode_again(ctx: Context, job_id: str) -> bool:
    """Stale features (the model changed between the stages) or gone ones (purged with another
    job): back to the encoder, a few times at most (predictors that keep disagreeing are a
    deployment fault, not a rollout)."""
    job = ctx.store.get_job(job_id)
    params = dict(job.params or {})
    params["reencoded"] = int(params.get("reencoded", 0)) + 1
    if params["reencoded"] > MAX_REENCODES:
        message = "the encoder and generator serve different model versions"
        ctx.store.fail(job_id, "model_version_mismatch", message)
        return False
    log.info("job %s: features are stale or gone; encoding again", job_id)
    ctx.store.set_params(job_id, params)
    if ctx.store.reencode(job_id):
        ctx.enqueue(Stage.ENCODE, job_id)
    return False


@contextmanager
def heartbeat(ctx: Context, job_id: str):
    """Report liveness every MOSS_HEARTBEAT_S while a stage runs, so the sweeper can tell a
    slow stage from a dead worker."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(ctx.settings.heartbeat_s):
            try:
                ctx.store.heartbeat(job_id)
            except Exception:
                log.warning("heartbeat for %s failed", job_id, exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
