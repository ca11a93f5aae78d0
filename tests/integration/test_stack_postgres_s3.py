"""The production shape on loopback: PostgreSQL for jobs and an S3 server for objects."""

from __future__ import annotations

import os
import time
import uuid

import httpx
import pytest

from services.core.settings import Settings
from services.stack import LocalStack, free_port
from tests.audio_files import encode, stereo_tone
from tests.jobs_env import write_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_url, s3_endpoint):
    database = os.environ.get("MOSS_TEST_DATABASE_URL")
    if not database:
        pytest.skip("MOSS_TEST_DATABASE_URL is not set (CI sets it to the machine's PostgreSQL)")
    home = tmp_path_factory.mktemp("moss-home")
    write_checkpoint(home / "models" / "tiny")
    settings = Settings(
        home=home,
        port=free_port(),
        redis_url=redis_url,
        database_url=database,
        storage="s3",
        s3_endpoint=s3_endpoint,
        s3_secure=False,
        s3_bucket=f"moss-{uuid.uuid4().hex[:10]}",
        s3_access_key="test",
        s3_secret_key="test",
        s3_region="us-east-1",
        generator_concurrency=2,
    )
    stack = LocalStack(settings)
    stack.start()
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def test_jobs_run_on_postgresql_and_s3(stack) -> None:
    data = encode(*stereo_tone(1.5, freq=523.0), 44_100, "ogg")
    headers = {"Authorization": f"Bearer {stack.api_key}"}
    with httpx.Client(base_url=stack.url, headers=headers, timeout=60) as client:
        jobs = []
        for task in ("caption", "transcribe"):
            response = client.post(
                "/v1/jobs",
                files={"file": ("a.ogg", data)},
                data={"task": task, "max_new_tokens": "4"},
            )
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            deadline = time.monotonic() + 90
            job = response.json()
            while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
                job = client.get(f"/v1/jobs/{job_id}", params={"wait": 10}).json()
            jobs.append(job)
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], jobs
    assert [j["timings"]["encode"]["cache_hit"] for j in jobs] == [False, True]
    assert stack.settings.resolved_database_url.startswith("postgresql")
