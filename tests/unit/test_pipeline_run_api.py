"""Pipeline runs through the API (in-process app, SQLite, local object store): the POST answer,
the run resource with its progress, the list per tenant (all for an admin), cancel, the event
stream's end, the log route (whole and followed), and another tenant's run answering 404."""

from __future__ import annotations

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from services.core import lifecycle
from services.core.jobstore import RunStore
from services.core.jobstore.runs import log_chunk_key
from services.gateway.app import create_app
from tests.jobs_env import make_context


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    ctx = make_context(tmp_path_factory.mktemp("runs"))
    queued: list = []
    app = create_app(
        ctx.settings, ctx, run_sweeper=False, enqueue_pipeline=lambda *r: queued.append(r)
    )
    keys = {
        "admin": ctx.store.create_key("ops", ["admin"])[0],
        "alice": ctx.store.create_key("alice", ["jobs"])[0],
        "bob": ctx.store.create_key("bob", ["jobs"])[0],
        "importer": ctx.store.create_key("alice", ["registry"])[0],
        "datasets": ctx.store.create_key("alice", ["datasets"])[0],
    }
    with TestClient(app) as client:
        yield client, ctx, RunStore.of(ctx.store), keys, queued


def alice_run(ctx, runs: RunStore, queued: list) -> str:
    """A run of Alice's tenant, made the one way runs are made (as her imports are)."""
    started = lifecycle.start_pipeline(
        ctx.settings, lambda *r: queued.append(r), "evaluate", {}, runs=runs, tenant="alice"
    )
    return started["run_id"]


def test_post_answers_the_run_with_its_status_url_and_log_route(env) -> None:
    client, _, _, keys, queued = env
    response = client.post("/v1/pipelines/sft/runs", headers=auth(keys["admin"]),
                           json={"params": {"steps": 3}})  # fmt: skip
    assert response.status_code == 202, response.text
    body = response.json()
    run_id = body["run_id"]
    assert body == {"run_id": run_id, "mode": "local", "status": "queued",
                    "url": f"/v1/pipelines/runs/{run_id}",
                    "log": f"/v1/pipelines/runs/{run_id}/log"}  # fmt: skip
    assert response.headers["Location"] == body["url"]
    assert queued[-1] == (run_id, "sft", {"steps": 3})  # the row first, then the message
    run = client.get(body["url"], headers=auth(keys["admin"])).json()
    assert run["status"] == "queued" and run["tenant"] == "ops" and run["params"] == {"steps": 3}


def test_the_resource_shows_progress_results_and_drops_ill_typed_values(env) -> None:
    client, ctx, runs, keys, queued = env
    run_id = alice_run(ctx, runs, queued)
    runs.start(run_id)
    fields = {"pipeline_step": "train", "step": 40, "total_steps": 200, "loss": 1.234}
    runs.add_progress(run_id, {**fields, "lr": 3e-4, "eta_s": 42.0, "message": "x"})
    runs.add_progress(run_id, {"step": "lots", "mlflow_run_id": "abc", "model": "m",
                               "version": "2", "decision": {"accepted": True}})  # fmt: skip
    run = client.get(f"/v1/pipelines/runs/{run_id}", headers=auth(keys["alice"])).json()
    assert run["status"] == "running"
    assert run["progress"]["pipeline_step"] == "train" and run["progress"]["loss"] == 1.234
    assert run["progress"]["step"] is None  # "lots" is no step: left out, not a 500
    assert (run["mlflow_run_id"], run["model"], run["version"]) == ("abc", "m", "2")
    assert run["decision"] == {"accepted": True}


def test_runs_are_listed_per_tenant_and_all_for_an_admin(env) -> None:
    client, ctx, runs, keys, queued = env
    mine = alice_run(ctx, runs, queued)

    def listed(key: str, **params) -> list[str]:
        response = client.get("/v1/pipelines/runs", headers=auth(keys[key]), params=params)
        assert response.status_code == 200, response.text
        return [run["id"] for run in response.json()["runs"]]

    assert mine in listed("alice") and mine in listed("importer")  # her registry key too
    assert mine not in listed("bob") and listed("bob", tenant="alice") == []
    assert mine in listed("admin") and mine in listed("admin", tenant="alice")
    assert mine not in listed("admin", tenant="bob")
    assert client.get("/v1/pipelines/runs", headers=auth(keys["datasets"])).status_code == 403


def test_another_tenants_run_is_answered_like_a_missing_one(env) -> None:
    client, ctx, runs, keys, queued = env
    run_id = alice_run(ctx, runs, queued)
    for method, suffix in (("GET", ""), ("GET", "/events"), ("GET", "/log"), ("DELETE", "")):
        theirs = client.request(method, f"/v1/pipelines/runs/{run_id}{suffix}",
                                headers=auth(keys["bob"]))  # fmt: skip
        nobody = client.request(method, f"/v1/pipelines/runs/000000000000{suffix}",
                                headers=auth(keys["bob"]))  # fmt: skip
        assert theirs.status_code == nobody.status_code == 404, (method, suffix)
        assert theirs.json() == nobody.json()
    assert runs.get(run_id).status == "queued"  # Bob's DELETE did nothing
    own = client.get(f"/v1/pipelines/runs/{run_id}", headers=auth(keys["admin"]))
    assert own.status_code == 200  # an admin reads every tenant's


def test_delete_cancels_a_queued_run_at_once_and_a_finished_one_is_409(env) -> None:
    client, ctx, runs, keys, queued = env
    run_id = alice_run(ctx, runs, queued)
    cancelled = client.delete(f"/v1/pipelines/runs/{run_id}", headers=auth(keys["alice"]))
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    again = client.delete(f"/v1/pipelines/runs/{run_id}", headers=auth(keys["alice"]))
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_finished"
    running = alice_run(ctx, runs, queued)
    runs.start(running)
    marked = client.delete(f"/v1/pipelines/runs/{running}", headers=auth(keys["alice"])).json()
    assert marked["status"] == "running" and marked["cancel_requested"] is True


def test_events_end_with_the_run_once_it_has_ended(env) -> None:
    client, ctx, runs, keys, queued = env
    run_id = alice_run(ctx, runs, queued)
    runs.start(run_id)
    threading.Timer(0.3, runs.finish, (run_id, "succeeded")).start()
    with client.stream("GET", f"/v1/pipelines/runs/{run_id}/events",
                       headers=auth(keys["alice"])) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    done = text.split("event: done\ndata: ", 1)[1].strip()
    assert json.loads(done)["status"] == "succeeded"


def test_the_log_route_streams_the_chunks_and_follows_until_the_end(env) -> None:
    client, ctx, runs, keys, queued = env
    run_id = alice_run(ctx, runs, queued)
    runs.start(run_id)
    folder = runs.get(run_id).log_key
    ctx.storage.put_bytes(log_chunk_key(folder, 0), b"step 1/2 loss 2.000\n")
    url = f"/v1/pipelines/runs/{run_id}/log"
    assert client.get(url, headers=auth(keys["alice"])).text == "step 1/2 loss 2.000\n"

    def finish_later() -> None:
        time.sleep(0.5)
        ctx.storage.put_bytes(log_chunk_key(folder, 1), b"step 2/2 loss 1.000\n")
        runs.finish(run_id, "succeeded")

    threading.Thread(target=finish_later).start()
    followed = client.get(url, headers=auth(keys["alice"]), params={"follow": "true"})
    assert followed.headers["content-type"].startswith("text/plain")
    assert followed.text == "step 1/2 loss 2.000\nstep 2/2 loss 1.000\n"


def test_a_queue_that_cannot_be_reached_fails_the_run_it_recorded(env) -> None:
    _, ctx, runs, _, _ = env

    def down(*_run) -> None:
        raise ConnectionError("broker away")

    with pytest.raises(Exception) as raised:
        lifecycle.start_pipeline(ctx.settings, down, "sft", {}, runs=runs, tenant="alice")
    assert raised.value.code == "queue_unavailable"
    failed, _ = runs.list("alice", status="failed")
    assert failed and failed[0].error["code"] == "queue_unavailable"


def test_a_run_that_could_not_be_recorded_leaves_its_idempotency_key_free(env, tmp_path) -> None:
    """The key is recorded before the run's row; a row that cannot be written (here: a
    database without the runs table) must not leave the key naming a run that does not exist,
    or every retry would make a new run."""
    from sqlalchemy import create_engine

    _, ctx, runs, _, queued = env
    store, key = ctx.store, "pipeline:retry-after-a-failed-write"

    def start(on: RunStore) -> dict:
        return lifecycle.start_pipeline(
            ctx.settings, lambda *r: queued.append(r), "sft", {"steps": 1},
            before=lambda run_id: _remember(store, key, run_id),
            forget=lambda: store.forget_idempotency("alice", key), runs=on, tenant="alice",
        )  # fmt: skip

    broken = RunStore(create_engine(f"sqlite:///{tmp_path}/no-runs-table.db"))
    with pytest.raises(Exception, match="pipeline_runs"):
        start(broken)
    assert store.idempotent_job("alice", key) is None
    first = start(runs)
    again = start(runs)
    assert again["run_id"] == first["run_id"] and again["replayed"]


def _remember(store, key: str, run_id: str) -> str | None:
    from services.core.jobstore import IdempotencyConflict

    try:
        store.remember_idempotency("alice", key, "digest", run_id)
    except IdempotencyConflict as exc:
        return exc.first[1]
    return None


def test_mossctl_import_fails_on_a_succeeded_run_that_names_no_version(env, capsys) -> None:
    """A Kubeflow run's record has no `version` (the KFP API does not give the steps' results):
    `mossctl models import` printed `registered X vNone` and exited 0."""
    import typer

    from services.cli.models import imported
    from services.core.jobstore.runs import new_run_id

    client, _, runs, keys, _ = env
    run = runs.create("ops", "import", {"hub_id": "org/m"}, "kubeflow", run_id=new_run_id())
    runs.start(run.id)
    runs.add_progress(run.id, {"kubeflow_state": "SUCCEEDED", "pipeline_step": "import"})
    runs.finish(run.id, "succeeded")
    final = client.get(f"/v1/pipelines/runs/{run.id}", headers=auth(keys["admin"])).json()
    with pytest.raises(typer.Exit) as raised:
        imported(final)
    assert raised.value.exit_code == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and "names no version" in line and "None" not in line
    runs.start(done := runs.create("ops", "import", {}, "local").id)
    runs.add_progress(done, {"model": "m", "version": 3, "message": "registered"})
    runs.finish(done, "succeeded")
    assert imported(client.get(f"/v1/pipelines/runs/{done}", headers=auth(keys["admin"])).json()) \
        == ("3", False)  # fmt: skip
