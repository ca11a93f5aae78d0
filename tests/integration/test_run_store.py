"""The run store (pipeline runs) on SQLite and PostgreSQL, and its migration (0005)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import inspect

from services.core.jobstore import RunStore
from services.core.jobstore import store as store_module
from services.core.jobstore.store import make_engine, migrate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def runs(job_store) -> RunStore:
    return RunStore.of(job_store)


def test_a_run_goes_queued_running_succeeded_with_its_progress_merged(runs) -> None:
    run = runs.create("acme", "sft", {"steps": 3}, "local", key_id="k1")
    assert (run.status, run.log_key) == ("queued", f"pipeline-logs/acme/{run.id}/")
    assert runs.start(run.id, worker="pipelines-1@h")
    assert not runs.start(run.id, worker="pipelines-2@h")  # a second delivery starts nothing
    assert runs.add_progress(run.id, {"pipeline_step": "train", "step": 10, "total_steps": 20,
                                      "loss": 2.5, "lr": 3e-3, "eta_s": 9.0})  # fmt: skip
    runs.add_progress(run.id, {"step": 20, "loss": 1.25, "eta_s": 0})
    runs.add_progress(run.id, {"pipeline_step": "register", "mlflow_run_id": "abc",
                               "model": "moss-audio-tiny-instruct", "version": 4})  # fmt: skip
    runs.add_progress(run.id, {"pipeline_step": "promote", "decision": '{"accepted": true}'})
    assert runs.finish(run.id, "succeeded")
    assert not runs.add_progress(run.id, {"step": 99})  # nothing moves a finished run
    assert not runs.finish(run.id, "failed")
    done = runs.get(run.id)
    assert done.status == "succeeded" and done.finished_at and done.started_at
    assert done.progress["step"] == 20 and done.progress["total_steps"] == 20
    assert done.progress["loss"] == 1.25 and done.progress["pipeline_step"] == "promote"
    assert (done.mlflow_run_id, done.model, done.version) == ("abc", "moss-audio-tiny-instruct",
                                                               "4")  # fmt: skip
    assert done.decision == {"accepted": True} and done.claimed_by is None


def test_cancel_ends_a_queued_run_at_once_and_marks_a_running_one(runs) -> None:
    queued = runs.create("acme", "sft", {}, "local")
    assert runs.request_cancel(queued.id)
    assert runs.get(queued.id).status == "cancelled"
    assert not runs.start(queued.id)  # the worker skips its message
    running = runs.create("acme", "sft", {}, "local")
    runs.start(running.id)
    assert runs.request_cancel(running.id) and runs.cancel_requested(running.id)
    assert runs.get(running.id).status == "running"  # until its worker has stopped it
    assert runs.finish(running.id, "cancelled")
    assert not runs.request_cancel(running.id)  # ended: nothing to cancel


def test_runs_are_listed_per_tenant_newest_first(runs) -> None:
    a, b = (f"{name}-{uuid.uuid4().hex[:8]}" for name in "ab")  # the database outlives a run
    mine = [runs.create(a, "evaluate", {}, "local").id for _ in range(3)]
    other = runs.create(b, "evaluate", {}, "local").id
    listed, total = runs.list(a, limit=2)
    assert total == 3 and [r.id for r in listed] == mine[::-1][:2]
    assert other not in {r.id for r in runs.list(a, limit=50)[0]}
    assert runs.get(other, tenant=a) is None and runs.get(other).tenant == b
    everyone = {r.id for r in runs.list(None, limit=200)[0]}
    assert set(mine) | {other} <= everyone
    runs.finish(mine[0], "failed", {"code": "pipeline_failed", "message": "x"})
    assert [r.id for r in runs.list(a, status="failed")[0]] == [mine[0]]


def test_a_run_whose_worker_is_gone_is_failed(runs) -> None:
    held = runs.create("acme", "sft", {}, "local")
    runs.start(held.id, worker="pipelines-9@host")
    other = runs.create("acme", "sft", {}, "local")
    runs.start(other.id, worker="pipelines-8@host")
    assert runs.fail_orphans("pipelines-9@host") == [held.id]
    assert runs.get(held.id).error["code"] == "worker_lost"
    assert runs.get(other.id).status == "running"
    assert other.id not in runs.fail_orphans(live={"pipelines-8@host"}, quiet_s=0)
    assert other.id not in runs.fail_orphans(live=set(), quiet_s=3600)  # touched: followed
    assert other.id in runs.fail_orphans(live={"pipelines-1@elsewhere"}, quiet_s=0)


def test_a_queued_run_left_alone_is_found_and_its_wait_starts_over_when_sent(runs) -> None:
    import time

    waiting = runs.create("acme", "sft", {}, "local")
    taken = runs.create("acme", "sft", {}, "local")
    runs.start(taken.id, worker="pipelines-1@h")
    time.sleep(0.3)
    found = {run.id for run in runs.lost_queued(older_than_s=0.2)}
    assert waiting.id in found and taken.id not in found
    assert runs.resent(waiting.id) and not runs.resent(taken.id)
    assert waiting.id not in {run.id for run in runs.lost_queued(older_than_s=0.2)}


def test_the_migration_goes_down_and_up_again(tmp_path) -> None:
    from alembic import command
    from alembic.config import Config

    engine = make_engine(f"sqlite:///{tmp_path}/m.db")
    migrate(engine)
    columns = {c["name"] for c in inspect(engine).get_columns("pipeline_runs")}
    assert {"tenant", "status", "progress", "mlflow_run_id", "model", "version", "decision",
            "error", "kubeflow_run_id", "log_key", "cancel_requested", "started_at",
            "finished_at"} <= columns  # fmt: skip
    config = Config()
    config.set_main_option(
        "script_location", str(Path(store_module.__file__).parent / "migrations")
    )
    config.attributes["connection"] = engine
    command.downgrade(config, "0004")
    assert "pipeline_runs" not in inspect(engine).get_table_names()
    command.upgrade(config, "head")
    assert "pipeline_runs" in inspect(engine).get_table_names()
