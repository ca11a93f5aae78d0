"""Pipeline runs through the API on the real stack (gateway, pipeline worker, kfp.local, MLflow,
object store): a run followed by its status route and its events to the end, with its loss and
what it registered; its log through the gateway; the page's list of runs; `mossctl pipeline
run` and `runs`; a second run cancelled with DELETE, its kfp.local process group gone."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from pipelines.follow import group_members
from tests.integration.test_cli_jobs import mossctl  # noqa: F401  (mossctl against the stack)
from tests.integration.test_web_page import browser  # noqa: F401  (the page check below)

pytestmark = pytest.mark.integration
TINY_RUN = {"size": "tiny", "dataset": "ci-runs", "num_clips": 16, "steps": 12, "batch_size": 4}


@pytest.fixture(scope="module")
def pipeline_worker(stack):
    if not stack.workers.get("pipelines"):  # an earlier test stopped every worker
        stack.start_worker("pipelines")
    return stack


def read_events(api, run_id: str) -> list[tuple[str, dict]]:
    """(event, data) of a run's server-sent events, up to and including `done`."""
    events, current = [], {}
    with api.stream("GET", f"/v1/pipelines/runs/{run_id}/events", timeout=600) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                current[name] = value
                continue
            if "event" in current:
                events.append((current["event"], json.loads(current["data"])))
                if current["event"] == "done":
                    return events
            current = {}
    raise AssertionError(f"the event stream ended without `done`: {events[-3:]}")


def wait_for(api, run_id: str, until, timeout: float = 600.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api.get(f"/v1/pipelines/runs/{run_id}").json()
        if until(run):
            return run
        time.sleep(0.3)
    raise TimeoutError(f"run {run_id} still {run['status']} ({run['progress']})")


@pytest.fixture(scope="module")
def finished_run(api, pipeline_worker) -> dict:
    """One short sft run followed to its end by its events and, meanwhile, its status route."""
    response = api.post("/v1/pipelines/sft/runs", json={"params": TINY_RUN})
    assert response.status_code == 202, response.text
    started = response.json()
    assert started["status"] == "queued" and response.headers["Location"] == started["url"]
    events: list = []
    reader = threading.Thread(target=lambda: events.extend(read_events(api, started["run_id"])))
    reader.start()
    seen = []  # what the status route said, in turn
    run = wait_for(api, started["run_id"], lambda r: seen.append(r) or r["status"] not in
                   ("queued", "running"))  # fmt: skip
    reader.join(60)
    return {"started": started, "run": run, "seen": seen, "events": events}


def test_a_run_is_followed_by_status_and_events_to_the_end_with_its_loss(finished_run) -> None:
    run, seen, events = finished_run["run"], finished_run["seen"], finished_run["events"]
    assert run["status"] == "succeeded", run
    assert run["mlflow_run_id"] and run["model"] == "moss-audio-tiny-instruct" and run["version"]
    assert run["progress"]["step"] == run["progress"]["total_steps"] == TINY_RUN["steps"]
    assert isinstance(run["progress"]["loss"], float) and run["progress"]["eta_s"] == 0
    running = [r for r in seen if r["status"] == "running"]
    assert running and any(r["progress"].get("loss") is not None for r in running)
    assert {r["progress"].get("pipeline_step") for r in running} & {"train", "evaluate"}
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded"
    changes = [data for kind, data in events if kind == "change"]
    assert any(c.get("status") == "running" for c in changes)
    losses = [c["progress"]["loss"] for c in changes if "loss" in c.get("progress", {})]
    assert losses, "no event carried a loss"
    assert any(c.get("version") == run["version"] for c in changes)


def test_mlflow_holds_what_a_kubeflow_follower_reads_of_the_run(stack, finished_run) -> None:
    """The train step tags its MLflow run with the pipeline run's id: what the worker reads
    from MLflow for a Kubeflow run (pipelines.tracking) is what this local run's progress lines
    reported."""
    from mlflow import MlflowClient

    from pipelines.tracking import tracked_fields

    run = finished_run["run"]
    made = tracked_fields(MlflowClient(stack.mlflow_uri), run["id"])
    assert made["mlflow_run_id"] == run["mlflow_run_id"]
    assert (made["model"], made["version"]) == (run["model"], run["version"])
    assert made["step"] == made["total_steps"] == TINY_RUN["steps"]
    assert made["loss"] == pytest.approx(run["progress"]["loss"], abs=1e-4)
    assert "decision" not in made  # no promote_to: the gate did not decide


def test_the_log_comes_through_the_gateway(api, finished_run) -> None:
    started = finished_run["started"]
    assert started["log"] == f"/v1/pipelines/runs/{started['run_id']}/log"
    log = api.get(started["log"]).text
    steps = TINY_RUN["steps"]
    assert f"step {steps}/{steps} loss" in log and "MOSS_PROGRESS" in log
    assert "Executing task" in log and log.rstrip().endswith(f"run {started['run_id']} succeeded")
    assert api.get(started["log"], params={"follow": "true"}).text == log  # ended: no waiting


def test_the_page_lists_the_run_with_its_progress(browser, stack, finished_run) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as shown
    from selenium.webdriver.support.ui import WebDriverWait

    run = finished_run["run"]
    browser.get(f"{stack.url}/")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{stack.url}/")
    browser.find_element(By.ID, "api-key").send_keys(stack.api_key)
    browser.find_element(By.ID, "sign-in").click()
    row = (By.CSS_SELECTOR, f"#runs tr[data-id='{run['id']}']")
    WebDriverWait(browser, 30).until(shown.visibility_of_element_located(row))
    text = browser.find_element(*row).text
    assert "succeeded" in text and f"step {TINY_RUN['steps']}/{TINY_RUN['steps']}" in text
    assert f"loss {run['progress']['loss']:.3f}" in text
    assert f"{run['model']} v{run['version']}" in text
    meter = browser.find_element(By.CSS_SELECTOR, f"#runs tr[data-id='{run['id']}'] progress")
    assert meter.get_attribute("value") == "1"


def run_processes(run_id: str) -> list[int]:
    """The pids of this run's kfp.local child (its command line names the run's root)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"pipelines.runner" in argv and any(run_id.encode() in arg for arg in argv):
                found.append(int(entry.name))
    return found


def test_delete_cancels_a_running_run_and_its_process_group_is_gone(api, finished_run) -> None:
    long = {**TINY_RUN, "steps": 5000}
    run_id = api.post("/v1/pipelines/sft/runs", json={"params": long}).json()["run_id"]
    wait_for(api, run_id, lambda r: r["status"] != "queued", timeout=120)
    deadline = time.monotonic() + 30
    while not (children := run_processes(run_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert children, "the run's kfp.local child was never seen"
    group = os.getpgid(children[0])
    cancelled = api.delete(f"/v1/pipelines/runs/{run_id}")
    assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"] is True
    run = wait_for(api, run_id, lambda r: r["status"] != "running", timeout=60)
    assert run["status"] == "cancelled" and run["error"]["code"] == "cancelled"
    assert run_processes(run_id) == []
    assert group_members(group) == []  # kfp.local's task processes went with it
    again = api.delete(f"/v1/pipelines/runs/{run_id}")
    assert again.status_code == 409 and again.json()["error"]["code"] == "run_finished"
    assert "cancel requested" in api.get(f"/v1/pipelines/runs/{run_id}/log").text


def test_mossctl_follows_a_run_to_its_end_and_reads_runs(mossctl, finished_run) -> None:  # noqa: F811
    failed = mossctl("pipeline", "run", "evaluate", "--param", "no_such_param=1")
    assert failed.exit_code == 1, failed.output
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has no parameter no_such_param" in errors[0], failed.stderr
    assert "[pipeline_failed]" in errors[0]
    run_id = failed.stderr.split("run ", 1)[1].split()[0]
    done = finished_run["run"]["id"]
    listed = mossctl("pipeline", "runs", "list")
    assert listed.exit_code == 0 and done in listed.stdout and run_id in listed.stdout
    got = mossctl("pipeline", "runs", "get", done)
    assert got.exit_code == 0 and json.loads(got.stdout)["status"] == "succeeded"
    logs = mossctl("pipeline", "runs", "logs", run_id, "--follow")
    assert logs.exit_code == 0 and "has no parameter no_such_param" in logs.stdout
    refused = mossctl("pipeline", "runs", "cancel", done)
    assert refused.exit_code == 2 and "[run_finished]" in refused.stderr
    missing = mossctl("pipeline", "runs", "get", "000000000000")
    assert missing.exit_code == 2 and "[not_found]" in missing.stderr
