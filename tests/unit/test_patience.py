"""Servers that are away: workers wait them out (core.patience), the gateway answers 503."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine
from sqlalchemy.exc import IntegrityError, OperationalError

from services.core.jobstore import JobStore
from services.core.patience import Patient, unavailable
from services.gateway.app import create_app
from services.stack import free_port
from tests.jobs_env import make_context


class Flaky:
    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error, self.calls = failures, error, 0

    def read(self, key: str) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return key.upper()


def test_a_call_is_retried_while_its_server_is_away() -> None:
    away = OperationalError("SELECT 1", {}, ConnectionRefusedError("refused"))
    flaky = Flaky(3, away)
    assert Patient(flaky, budget_s=10).read("k") == "K" and flaky.calls == 4


def test_patience_ends_and_a_refusal_is_not_retried() -> None:
    away = Flaky(10**6, ConnectionRefusedError("refused"))
    with pytest.raises(ConnectionRefusedError):
        Patient(away, budget_s=0.5).read("k")
    refused = Flaky(10**6, IntegrityError("INSERT", {}, ValueError("duplicate")))
    with pytest.raises(IntegrityError):
        Patient(refused, budget_s=10).read("k")
    assert refused.calls == 1  # a request the server refused is not a server away
    assert not unavailable(ValueError("x"))


def test_the_gateway_answers_503_while_the_database_is_away(tmp_path) -> None:
    ctx = make_context(tmp_path)
    ctx.store = JobStore(create_engine(f"postgresql+psycopg://u@127.0.0.1:{free_port()}/x"))
    app = create_app(ctx.settings, ctx, worker_queues=lambda: {"encode"}, run_sweeper=False)
    with TestClient(app) as client:
        response = client.get("/v1/jobs", headers={"Authorization": "Bearer moss_whatever"})
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.headers["retry-after"] == "2"
