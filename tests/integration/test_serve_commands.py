"""The commands containers run: `mossctl migrate`, `mossctl worker`, `mossctl worker-ping`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from services.core.jobstore import JobStore

pytestmark = pytest.mark.integration


def mossctl(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_migrate_creates_the_schema_and_the_admin_key(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/jobs.db"
    env = {"MOSS_DATABASE_URL": url, "MOSS_API_KEY": "moss_test-admin-key-0123456789"}
    first = mossctl("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert mossctl("migrate", env=env).returncode == 0  # idempotent: upgrades run every deploy
    principal = JobStore.connect(url, run_migrations=False).authenticate(env["MOSS_API_KEY"])
    assert principal is not None and principal.can("admin")
    assert env["MOSS_API_KEY"] not in first.stdout + first.stderr  # no secret in logs


def test_migrate_against_an_unreachable_database_fails_in_one_line(tmp_path) -> None:
    env = {"MOSS_DATABASE_URL": "postgresql+psycopg://u:secret@127.0.0.1:1/x"}
    run = mossctl("migrate", env=env)
    assert run.returncode != 0 and "cannot migrate 127.0.0.1:1/x" in run.stderr
    assert "secret" not in run.stderr


def test_worker_answers_worker_ping(tmp_path, redis_url) -> None:
    url = redis_url.rsplit("/", 1)[0] + "/6"
    env = {"MOSS_REDIS_URL": url, "MOSS_DATABASE_URL": f"sqlite:///{tmp_path}/jobs.db"}
    env["MOSS_HOME"] = str(tmp_path)
    assert mossctl("worker-ping", "encode", "--timeout", "1", env=env).returncode == 1
    worker = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "worker", "encode"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ping = mossctl("worker-ping", "encode", "--timeout", "1", env=env)
            if ping.returncode == 0:
                break
            time.sleep(0.5)
        assert ping.returncode == 0, ping.stderr
        other = mossctl("worker-ping", "generate", "--timeout", "1", env=env)
        assert other.returncode == 1 and "did not answer" in other.stderr
    finally:
        worker.terminate()
        worker.wait(20)


def test_worker_refuses_an_unknown_queue() -> None:
    run = mossctl("worker", "transcode", env={"MOSS_REDIS_URL": "redis://127.0.0.1:1/0"})
    assert run.returncode == 2
    assert "queue must be one of encode, generate, annotate, pipelines" in run.stderr
