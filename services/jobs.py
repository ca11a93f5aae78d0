"""The job path as plain functions: submit, encode, generate, sweep.

The gateway calls `submit_job`; Celery tasks are thin wrappers over `encode_job` and
`generate_job`; the sweeper runs `sweep`. Tests call them directly, without a broker. Messages
carry job ids only: audio and features travel through the object store (claim checks).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from model import AudioDecodeError, EncoderOutput, split_audio
from model.audio_sandbox import load_audio_isolated, probe_audio_isolated
from model.segment import Segment
from model.tasks import TASKS, instruction_for, segment_seconds_for
from model.thinking import split_thinking
from model.timestamps import parse_timestamps

from .errors import ApiError, audio_error
from .inference import Backend, ContextExceeded, StaleFeatures
from .jobstore import Job, JobStore, Principal
from .models import ModelNotFound, ModelSpec, describe
from .models import check as check_model
from .settings import Settings
from .storage import Storage

log = logging.getLogger("moss.jobs")


Enqueue = Callable[[str, str], None]  # (stage, job_id)
SAMPLING = ("greedy", "model")  # `temperature` as given, or the checkpoint's own defaults
PROGRESS_EVERY_S = 0.25


@dataclass
class Context:
    settings: Settings
    store: JobStore
    storage: Storage
    enqueue: Enqueue
    backend: Backend | None = None  # workers only: the gateway runs no model


# --- submit ----------------------------------------------------------------------------------


def submit_job(
    ctx: Context,
    principal: Principal,
    upload: BinaryIO,
    size: int,
    task: str,
    prompt: str | None,
    model: str | None,
    max_new_tokens: int | None,
    temperature: float,
    sampling: str = "greedy",
) -> Job:
    """Validate, store the audio, record the job (durable from here), enqueue the encoder."""
    settings = ctx.settings
    if task not in TASKS:
        raise ApiError(422, "invalid_task", f"task must be one of {', '.join(TASKS)}")
    if task in ("ask", "chat") and not (prompt or "").strip():
        raise ApiError(422, "prompt_required", f"task {task!r} needs a prompt")
    if max_new_tokens is not None and not 1 <= max_new_tokens <= 8192:
        raise ApiError(422, "invalid_max_new_tokens", "max_new_tokens must be in 1..8192")
    if not 0.0 <= temperature <= 2.0:
        raise ApiError(422, "invalid_temperature", "temperature must be in 0..2")
    if sampling not in SAMPLING:
        raise ApiError(422, "invalid_sampling", f"sampling must be one of {', '.join(SAMPLING)}")
    try:
        model_ref = check_model(model, settings)
    except ValueError as exc:
        raise ApiError(422, "invalid_model", str(exc)) from exc
    except ModelNotFound as exc:
        raise ApiError(422, "unknown_model", str(exc)) from exc
    if size > settings.max_upload_bytes:
        raise ApiError(413, "upload_too_large", f"the upload exceeds {settings.max_upload_mb} MB")
    if size == 0:
        raise ApiError(415, "empty_audio", "the uploaded file is empty")

    upload.seek(0)
    data = upload.read()
    try:  # the header, the demuxed duration and a decoded prefix; the worker decodes the rest
        info = probe_audio_isolated(
            data, max_seconds=settings.max_audio_seconds, limits=settings.decode_limits
        )
    except AudioDecodeError as exc:
        raise audio_error(exc.code, exc.message) from exc
    seconds = info.seconds
    if seconds < 0.1:
        raise ApiError(422, "audio_too_short", "the audio is shorter than 0.1 s")

    job_id = str(uuid.uuid4())
    audio_key = f"audio/{principal.tenant}/{job_id}"
    upload.seek(0)
    ctx.storage.put_file(audio_key, upload, size)
    try:
        job = ctx.store.create_job(
            id=job_id,
            tenant=principal.tenant,
            task=task,
            prompt=prompt,
            model=model_ref,
            params={
                "max_new_tokens": max_new_tokens or settings.max_new_tokens,
                "temperature": temperature,
                "sampling": sampling,
            },
            audio_key=audio_key,
            audio_sha256=hashlib.sha256(data).hexdigest(),
            audio_seconds=round(seconds, 3),
        )
    except BaseException:
        ctx.storage.delete(audio_key)  # nothing left behind
        raise
    try:
        ctx.enqueue("encode", job.id)
    except Exception:
        log.warning("could not enqueue job %s now; the sweeper will", job.id, exc_info=True)
    return job


# --- encode ----------------------------------------------------------------------------------


def features_key(audio_sha256: str, version: str, segment_seconds: float | None) -> str:
    """Content-addressed: the audio, the weights, and how the audio was cut (a caption of a
    clip needs it whole, its transcription may have been split)."""
    plan = "whole" if segment_seconds is None else f"seg{segment_seconds:g}"
    return f"features/{audio_sha256}-{version}-{plan}.safetensors"


def cache_plan(plan: float | None, audio_seconds: float | None) -> float | None:
    """The plan a cache lookup names: a clip clearly shorter than one segment is encoded whole
    either way, so its caption and its transcription share one set of features. The margin
    covers a duration measured from packet timestamps; a clip near the limit is looked up
    under its segmented key and, if it came out as one segment, stored under the whole one
    (a miss, never a wrong hit)."""
    if plan is not None and audio_seconds is not None and audio_seconds + 1.0 < plan:
        return None
    return plan


def encode_job(ctx: Context, job_id: str) -> bool:
    """Audio -> segments -> encoder (local or a predictor) -> features in the object store.

    Features are content-addressed (audio digest + weights digest), so a second job on the same
    audio skips the encoder. Returns True when the generator should run next, False when this
    delivery had nothing to do (stage already taken, job cancelled or gone).
    """
    if not ctx.store.claim_stage(job_id, "encode"):
        return False
    # The heartbeat covers the whole stage, model loading included: a first load from the
    # registry can outlast MOSS_SWEEP_AFTER_S, and the sweeper would give the stage to another
    # worker.
    with heartbeat(ctx, job_id):
        return _encode_claimed(ctx, job_id)


def _encode_claimed(ctx: Context, job_id: str) -> bool:
    job = ctx.store.get_job(job_id)
    served = ctx.backend.lookup(job.model)
    params = {k: v for k, v in (job.params or {}).items() if k != "model_version"}
    if served.registry_version:  # pin it: the generator must use the same version
        params["model_version"] = served.registry_version
    ctx.store.set_params(job_id, params)
    plan = segment_seconds_for(job.task, ctx.settings.max_segment_seconds)
    lookup = cache_plan(plan, job.audio_seconds)
    key = features_key(job.audio_sha256, served.version, lookup) if served.version else None
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
        key = features_key(job.audio_sha256, version, plan if len(segments) > 1 else None)
        ctx.storage.put_bytes(key, pack_features(segments, outputs, version))
    ctx.store.complete_stage(job_id, "encode", features_key=key, progress=0.1)
    ctx.store.record_timing(job_id, "encode", cache_hit=cached)
    return True


def pack_features(segments, outputs: list[EncoderOutput], version: str) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for i, out in enumerate(outputs):
        tensors[f"features.{i}"] = out.features.contiguous()
        for k, tap in enumerate(out.taps):
            tensors[f"tap{k}.{i}"] = tap.contiguous()
    meta = [
        {"offset": s.offset_seconds, "duration": s.duration_seconds, "tokens": len(o.features)}
        for s, o in zip(segments, outputs, strict=True)
    ]
    return save_safetensors(
        tensors, metadata={"segments": json.dumps(meta), "model_version": version}
    )


def load_features(blob: bytes) -> tuple[list[dict], list[EncoderOutput]]:
    tensors = load_safetensors(blob)
    segments = json.loads(_metadata(blob)["segments"])
    taps = sorted({int(k[3:].split(".")[0]) for k in tensors if k.startswith("tap")})
    outputs = [
        EncoderOutput(
            features=tensors[f"features.{i}"],
            taps=[tensors[f"tap{k}.{i}"] for k in taps],
            token_lengths=torch.tensor([s["tokens"]]),
        )
        for i, s in enumerate(segments)
    ]
    return segments, outputs


def _metadata(blob: bytes) -> dict[str, str]:
    """The safetensors header's `__metadata__` (8-byte length, then JSON)."""
    header_len = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + header_len]).get("__metadata__", {})


# --- generate --------------------------------------------------------------------------------


def generate_job(ctx: Context, job_id: str) -> bool:
    """Features -> adapter/mergers -> prompt -> decoder (local or a predictor) -> result."""
    if not ctx.store.claim_stage(job_id, "generate"):
        return False
    with heartbeat(ctx, job_id):  # from the claim on, model loading included (see encode_job)
        return _generate_claimed(ctx, job_id)


def _generate_claimed(ctx: Context, job_id: str) -> bool:
    job = ctx.store.get_job(job_id)
    params = job.params or {}
    served = ctx.backend.lookup(job.model, registry_version=params.get("model_version"))
    blob = ctx.storage.get_bytes(job.features_key)
    segments, encoded = load_features(blob)
    features_version = _metadata(blob).get("model_version", "")
    instruction = instruction_for(job.task, job.prompt)
    max_new_tokens = int(params.get("max_new_tokens", ctx.settings.max_new_tokens))
    temperature = (
        None  # the model's own generation_config.json
        if params.get("sampling") == "model"
        else float(params.get("temperature", 0.0))
    )
    generations = []
    try:
        for output in encoded:
            generations.append(
                ctx.backend.generate(
                    served, output, instruction, max_new_tokens, temperature, features_version
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
    try:
        texts = [g.text() for g in generations]
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
    result = build_result(job.task, segments, texts)
    # Never cut silently: say when an answer ran into max_new_tokens.
    result["finish_reason"] = "length" if any(g.hit_limit() for g in generations) else "stop"
    result["model"] = answered_by(ctx, job.model, served, features_version)
    ctx.store.complete_stage(job_id, "generate", result=result)
    return True


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
    """Stale features (the model changed between the stages): back to the encoder, a few times
    at most (predictors that keep disagreeing are a deployment fault, not a rollout)."""
    job = ctx.store.get_job(job_id)
    params = dict(job.params or {})
    params["reencoded"] = int(params.get("reencoded", 0)) + 1
    if params["reencoded"] > MAX_REENCODES:
        message = "the encoder and generator serve different model versions"
        ctx.store.fail(job_id, "model_version_mismatch", message)
        return False
    log.info("job %s: features are from another model version; encoding again", job_id)
    ctx.store.set_params(job_id, params)
    if ctx.store.reencode(job_id):
        ctx.enqueue("encode", job_id)
    return False


def build_result(task: str, segments: list[dict], texts: list[str]) -> dict:
    answers, thoughts, timed = [], [], []
    for segment, text in zip(segments, texts, strict=True):
        split = split_thinking(text)
        answers.append(split.answer)
        if split.thinking:
            thoughts.append(split.thinking)
        if task == "transcribe_timestamps":
            for item in parse_timestamps(split.answer, offset=segment["offset"]):
                entry = {"start": item.start, "end": item.end, "text": item.text}
                timed.append({**entry, "flag": item.flag} if item.flag else entry)
    result: dict = {"text": " ".join(a for a in answers if a)}
    if task == "transcribe_timestamps":
        result["segments"] = timed
    if thoughts:
        result["thinking"] = "\n\n".join(thoughts)
    return result


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


# --- sweep -----------------------------------------------------------------------------------


def sweep(ctx: Context) -> list[tuple[str, str]]:
    """Re-enqueue what a dead worker left: stale running stages, and jobs never picked up."""
    settings = ctx.settings
    actions = ctx.store.release_stale(older_than_s=settings.sweep_after_s)
    actions += ctx.store.waiting(older_than_s=settings.sweep_after_s * 5)
    for job_id, stage in actions:
        try:
            ctx.enqueue(stage, job_id)
            ctx.store.touch(job_id)
        except Exception:
            log.warning("sweeper could not enqueue %s for %s", stage, job_id, exc_info=True)
    return actions
