"""The storage backends (local directory, S3 over HTTP) and the job store (SQLite, PostgreSQL)."""

from __future__ import annotations

import io
import uuid

import pytest

from services.core.storage import LocalStorage, ObjectNotFound, S3Storage

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path, s3_endpoint):
    if request.param == "local":
        return LocalStorage(tmp_path / "objects")
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    return S3Storage(s3_endpoint, bucket, "test", "test", region="us-east-1", secure=False)


def test_round_trip_and_delete(storage) -> None:
    data = b"\x00\x01" * 100_000
    storage.put_file("audio/t1/job.bin", io.BytesIO(data), len(data))
    assert storage.exists("audio/t1/job.bin")
    assert storage.get_bytes("audio/t1/job.bin") == data
    storage.put_bytes("features/abc.safetensors", b"xyz")
    assert storage.get_bytes("features/abc.safetensors") == b"xyz"
    storage.delete("audio/t1/job.bin")
    assert not storage.exists("audio/t1/job.bin")
    with pytest.raises(ObjectNotFound):
        storage.get_bytes("audio/t1/job.bin")
    storage.ping()


def test_failed_write_leaves_nothing(storage) -> None:
    class Broken(io.RawIOBase):
        def __init__(self) -> None:
            self.sent = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            if self.sent > 100_000:
                raise OSError("client went away")
            self.sent += 50_000
            return b"a" * 50_000

    with pytest.raises(OSError):
        storage.put_file("audio/t1/broken.bin", Broken(), 1_000_000)
    assert not storage.exists("audio/t1/broken.bin")


@pytest.mark.parametrize("key", ["../escape", "/abs", "a//b", ""])
def test_unsafe_keys_are_refused(tmp_path, key) -> None:
    with pytest.raises(ValueError):
        LocalStorage(tmp_path).put_bytes(key, b"x")


def _job(store, tenant="acme", task="caption"):
    return store.create_job(
        tenant=tenant,
        task=task,
        prompt=None,
        model="tiny",
        params={},
        audio_key="k",
        audio_sha256="0" * 64,
        audio_seconds=1.0,
    )


def test_job_lifecycle(job_store) -> None:
    job = _job(job_store)
    assert job_store.get_job(job.id).status == "queued"
    assert not job_store.claim_stage(job.id, "generate")  # not encoded yet
    assert job_store.claim_stage(job.id, "encode")
    assert not job_store.claim_stage(job.id, "encode")  # a duplicate delivery skips
    assert job_store.complete_stage(job.id, "encode", features_key="f")
    assert job_store.get_job(job.id).stage == "encoded"
    assert job_store.claim_stage(job.id, "generate")
    assert job_store.heartbeat(job.id, progress=0.5)
    assert job_store.complete_stage(job.id, "generate", result={"text": "a dog barks"})
    done = job_store.get_job(job.id)
    assert done.status == "succeeded" and done.result == {"text": "a dog barks"}
    assert done.progress == 1.0 and done.features_key == "f" and done.stage == "done"
    assert set(done.timings) == {"encode", "generate"} and done.timings["encode"]["seconds"] >= 0
    assert done.attempts == 2
    # A redelivered task cannot move a finished job.
    assert not job_store.claim_stage(job.id, "generate")
    assert not job_store.fail(job.id, "x", "y")


def test_cancel_and_tenants(job_store) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    job = _job(job_store, tenant)
    assert job_store.get_job(job.id, tenant="someone-else") is None
    assert job_store.request_cancel(job.id)
    assert job_store.is_cancelled(job.id)
    assert not job_store.claim_stage(job.id, "encode")
    other = _job(job_store, tenant)
    rows, total = job_store.list_jobs(tenant)
    assert total == 2 and [r.id for r in rows] == [other.id, job.id]
    rows, total = job_store.list_jobs(tenant, status="cancelled")
    assert total == 1 and rows[0].id == job.id
    rows, _ = job_store.list_jobs(tenant, limit=1, offset=1)
    assert [r.id for r in rows] == [job.id]


def test_stale_stages_are_released_once(job_store) -> None:
    job = _job(job_store)
    job_store.claim_stage(job.id, "encode")
    assert (job.id, "encode") not in job_store.release_stale(older_than_s=3600)
    assert (job.id, "encode") in job_store.release_stale(older_than_s=-1)
    assert (job.id, "encode") not in job_store.release_stale(older_than_s=-1)
    assert job_store.get_job(job.id).stage == "queued"
    assert (job.id, "encode") in job_store.waiting(older_than_s=-1)
    assert job_store.claim_stage(job.id, "encode")


def test_orphaned_stages_are_given_back_when_their_worker_is_gone(job_store) -> None:
    """Not after the heartbeat timeout: at once for the restarted worker of the same name, and
    after two quiet heartbeats for a worker that no longer answers a ping."""
    node = f"generate-1@{uuid.uuid4().hex[:6]}"
    mine, theirs, unnamed = _job(job_store), _job(job_store), _job(job_store)
    assert job_store.claim_stage(mine.id, "encode", node)
    assert job_store.claim_stage(theirs.id, "encode", "encode-2@elsewhere")
    assert job_store.claim_stage(unnamed.id, "encode")
    assert job_store.get_job(mine.id).claimed_by == node
    assert job_store.release_orphans(worker=node) == [(mine.id, "encode")]
    assert job_store.get_job(mine.id).stage == "queued"
    assert job_store.get_job(mine.id).claimed_by is None
    # The other worker answers a ping: nothing; it stops answering: still spared while its
    # last heartbeat is recent, given back once it is older than the grace.
    assert job_store.release_orphans(live={"encode-2@elsewhere"}, older_than_s=-1) == []
    assert job_store.release_orphans(live=set(), older_than_s=3600) == []
    assert job_store.release_orphans(live=set(), older_than_s=-1) == [(theirs.id, "encode")]
    assert job_store.release_orphans(live=set(), older_than_s=-1) == []  # once
    assert job_store.get_job(unnamed.id).stage == "encode"  # no name: the heartbeat rule only
    assert job_store.claim_stage(mine.id, "encode", node)  # runs again
    assert job_store.complete_stage(mine.id, "encode")
    assert job_store.get_job(mine.id).claimed_by is None


def test_annotation_jobs_take_their_own_stage_only(job_store) -> None:
    job = _job(job_store, task="annotate")
    assert not job_store.claim_stage(job.id, "encode")  # a stray encode message: not its job
    assert (job.id, "annotate") in job_store.waiting(older_than_s=-1)  # what the sweeper sends
    assert job_store.claim_stage(job.id, "annotate")
    assert (job.id, "annotate") in job_store.release_stale(older_than_s=-1)
    assert job_store.get_job(job.id).stage == "queued"
    assert job_store.claim_stage(job.id, "annotate")
    assert job_store.complete_stage(job.id, "annotate", result={"items": 1})
    done = job_store.get_job(job.id)
    assert done.status == "succeeded" and done.stage == "done" and done.progress == 1.0
    model_job = _job(job_store)
    assert not job_store.claim_stage(model_job.id, "annotate")


def test_api_keys(job_store) -> None:
    plain, record = job_store.create_key("acme", ["jobs"], name="ci")
    principal = job_store.authenticate(plain)
    assert principal.tenant == "acme" and principal.can("jobs") and not principal.can("admin")
    assert record.key_hash != plain and plain.startswith("moss_")
    assert job_store.authenticate(plain + "x") is None
    assert job_store.revoke_key(record.id)
    assert job_store.authenticate(plain) is None


def test_the_bootstrap_key_comes_back_on_start(job_store) -> None:
    """An admin may revoke (or narrow) the configured admin key; the next start restores it, so
    the operator is never locked out. A key no longer configured stays revoked."""
    plain = "moss_bootstrap_" + uuid.uuid4().hex
    record = job_store.restore_key("admin", ["admin", "jobs"], "admin", plain)
    assert job_store.authenticate(plain).can("admin")
    assert job_store.revoke_key(record.id) and job_store.authenticate(plain) is None
    again = job_store.restore_key("admin", ["admin", "jobs"], "admin", plain)
    assert again.id == record.id and job_store.authenticate(plain).can("admin")
    old, old_record = job_store.create_key("admin", ["admin", "jobs"], name="admin")
    assert job_store.revoke_key(old_record.id)
    job_store.restore_key("admin", ["admin", "jobs"], "admin", plain)  # another start
    assert job_store.authenticate(old) is None


def test_the_stacks_valkey_keeps_its_queue_across_a_crash(tmp_path) -> None:
    """`mossctl up`'s Valkey appends to a file under MOSS_HOME: queued messages survive a
    SIGKILL right after they were acknowledged (fsync on every write) and a restart."""
    import signal
    import subprocess
    import time

    import redis

    from services.stack import free_port, valkey_argv, wait_for_port

    port = free_port()
    argv = valkey_argv(port, tmp_path / "valkey")
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        redis.Redis(port=port).lpush("encode", "job-1", "job-2")
        server.send_signal(signal.SIGKILL)  # no time to flush: it was on disk before the reply
        server.wait(10)
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for_port(port)
        deadline = time.monotonic() + 10
        while True:  # it answers LOADING while it replays the file
            try:
                queued = redis.Redis(port=port).lrange("encode", 0, -1)
                break
            except redis.exceptions.BusyLoadingError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert sorted(queued) == [b"job-1", b"job-2"]
    finally:
        server.kill()
        server.wait(10)


def _migrate_once(url: str) -> None:
    from services.core.jobstore.store import make_engine, migrate

    migrate(make_engine(url))


def test_processes_starting_together_migrate_one_at_a_time() -> None:
    """Gateways, workers and the chart's migrate Job all migrate as they start; on a fresh
    PostgreSQL database, four at once must all come up (without the lock: UniqueViolation)."""
    import multiprocessing
    import os

    from sqlalchemy import create_engine, text

    base = os.environ.get("MOSS_TEST_DATABASE_URL")
    if not base:
        pytest.skip("MOSS_TEST_DATABASE_URL is not set (CI sets it to the machine's PostgreSQL)")
    name = f"migrate_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        url = base.rsplit("/", 1)[0] + f"/{name}"
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=_migrate_once, args=(url,)) for _ in range(4)]
        for process in processes:
            process.start()
        for process in processes:
            process.join(120)
        assert [p.exitcode for p in processes] == [0, 0, 0, 0]
        from services.core.jobstore import JobStore

        assert JobStore.connect(url).list_jobs("nobody")[1] == 0
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()
