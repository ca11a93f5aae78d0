"""The Celery tasks (run eagerly, no broker): retries on transient errors, failures recorded."""

from __future__ import annotations

import io
import itertools

import pytest

import services.worker as worker
from services.core.jobstore import Principal
from services.jobs.submit import submit_job
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import make_context, write_checkpoint

_FREQUENCIES = itertools.count(200, 37)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    write_checkpoint(home / "models" / "tiny")
    return home


@pytest.fixture
def eager():
    worker.app.conf.update(task_always_eager=True)
    yield
    worker.app.conf.update(task_always_eager=False)


def _job(ctx):
    # A new clip each time: a clip already encoded would hit the feature cache.
    data = encode(
        *stereo_tone(1.0, freq=200 + 100 * len(ctx.enqueue.calls) + id(ctx) % 997), 44_100, "wav"
    )
    return submit_job(
        ctx,
        Principal("k", "t", ("jobs",)),
        io.BytesIO(data),
        len(data),
        "caption",
        None,
        None,
        4,
        0.0,
    )


def _flaky_storage(ctx, failures: int, error: Exception):
    real = ctx.storage.get_bytes
    state = {"left": failures}

    def get_bytes(key: str) -> bytes:
        if key.startswith("audio/") and state["left"] > 0:
            state["left"] -= 1
            raise error
        return real(key)

    ctx.storage.get_bytes = get_bytes
    return state


def test_transient_error_is_retried_then_succeeds(home, eager, monkeypatch) -> None:
    ctx = make_context(home)
    monkeypatch.setattr(worker, "context", lambda: ctx)
    job = _job(ctx)
    state = _flaky_storage(ctx, 2, ConnectionError("object store unreachable"))
    worker.encode.apply(args=[job.id])
    done = ctx.store.get_job(job.id)
    assert state["left"] == 0 and done.stage == "encoded" and done.attempts == 3
    assert ("generate", job.id) in ctx.enqueue.calls


def test_retries_give_up_with_a_clear_error(home, eager, monkeypatch) -> None:
    ctx = make_context(home, task_max_retries=1)
    monkeypatch.setattr(worker, "context", lambda: ctx)
    job = _job(ctx)
    _flaky_storage(ctx, 10, ConnectionError("object store unreachable"))
    worker.encode.apply(args=[job.id])
    failed = ctx.store.get_job(job.id)
    assert failed.status == "failed" and failed.error["code"] == "encode_failed"
    assert "gave up after retries" in failed.error["message"]


def test_a_broken_input_fails_the_job_without_retrying(home, eager, monkeypatch) -> None:
    ctx = make_context(home)
    monkeypatch.setattr(worker, "context", lambda: ctx)
    job = _job(ctx)
    state = _flaky_storage(ctx, 1, ValueError("corrupt object"))
    worker.encode.apply(args=[job.id])
    failed = ctx.store.get_job(job.id)
    assert state["left"] == 0 and failed.status == "failed" and failed.attempts == 1
    assert failed.error == {"code": "encode_failed", "message": "ValueError: corrupt object"}
