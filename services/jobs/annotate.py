"""Annotation jobs, the worker's half: a tenant's audio in, a unified-caption manifest and an
SFT manifest out, on the same job machinery as every job (durable, tenant-scoped, events,
webhooks, the sweeper).

`annotate_job` runs the annotation engine over the job's items (manifest lines: the labels
they carry are kept) with progress, and commits both outputs as datasets of the tenant
(`NAME-captions`, `NAME-sft`), so they can be listed and trained on. Its result reports how the
engine's event labels were mapped to the vocabulary (`labels`). services.jobs.annotations, the
gateway's half, records the job.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from ..annotation.engine import Annotated, AnnotationConfig, Engine, annotate_all
from ..core import dataset_store
from ..core.jobstate import advance
from ..core.jobstore import Job
from .context import Context
from .stages import heartbeat

_ENGINES: dict[tuple[str, str], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(settings, model: str) -> Engine:
    """One engine per (annotators, model) in a process: models load once."""
    key = (settings.annotators or "", model)
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            config = AnnotationConfig(max_seconds=settings.annotation_max_seconds, model=model)
            if settings.annotators:
                config.annotators = json.loads(settings.annotators)
            _ENGINES[key] = Engine(config, settings)
        return _ENGINES[key]


def annotate_job(ctx: Context, job_id: str) -> bool:
    """Annotate every item of the job; the outputs become datasets of its tenant."""
    if not ctx.store.claim_stage(job_id, "annotate", ctx.worker):
        return False
    with heartbeat(ctx, job_id):
        job = ctx.store.get_job(job_id)
        items = [json.loads(x) for x in ctx.storage.get_bytes(job.audio_key).decode().splitlines()
                 if x.strip()]  # fmt: skip
        engine = engine_for(ctx.settings, job.model)
        vocabulary = engine.vocabulary(job.params.get("label_map"))
        started, last_report = time.monotonic(), 0.0

        def progress(done: int, _run: Annotated) -> None:
            nonlocal last_report
            if time.monotonic() - last_report > 1.0 or done == len(items):
                ctx.store.heartbeat(job_id, progress=0.99 * done / len(items))
                last_report = time.monotonic()

        run = annotate_all(engine, items, ctx.storage.get_bytes, vocabulary,
                           lambda: ctx.store.is_cancelled(job_id), progress)  # fmt: skip
        if ctx.store.is_cancelled(job_id):
            return False
        result = _commit(ctx, job, run)
        result["seconds"] = round(time.monotonic() - started, 2)
        if not run.captions:
            failures = run.failures
            ctx.store.fail(job_id, "annotation_failed", f"no item could be annotated: "
                           f"{failures[0]['code']}: {failures[0]['message']}")  # fmt: skip
            return False
        return advance(ctx.store, ctx.enqueue, job_id, "annotate", result=result)


def _commit(ctx: Context, job: Job, run: Annotated) -> dict:
    captions, sft, failures = run.captions, run.sft, run.failures
    base = f"annotations/{job.tenant}/{job.id}/"
    ctx.storage.put_bytes(base + "failures.jsonl",
                          "".join(json.dumps(f) + "\n" for f in failures).encode())  # fmt: skip
    result: dict[str, Any] = {"items": len(captions) + len(failures), "annotated": len(captions),
                              "failed": len(failures), "failures": failures[:20],
                              "failures_key": base + "failures.jsonl",
                              "labels": run.labels}  # fmt: skip
    if not captions:
        return result
    source = job.params.get("dataset", "annotated")
    for suffix, lines in (("captions", captions), ("sft", sft)):
        name = f"{source}-{suffix}"[:64]
        raw = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines).encode()
        info = dataset_store.commit_manifest(ctx.storage, job.tenant, name, raw)
        result[suffix] = {"dataset": name, "manifest": info.manifest, "digest": info.digest,
                          "clips": info.clips}  # fmt: skip
    return result
