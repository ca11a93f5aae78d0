"""Pipeline runs, worker side: progress merged into the record, the state machine, a real child
process followed and cancelled (its whole process group gone), the trainer's progress lines,
and Kubeflow runs followed through a small HTTP server on loopback that answers like the KFP
v2beta1 REST API (`/apis/v2beta1/runs/{id}`, `:terminate`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipelines.follow import RunLog, failure_message, fields_of, follow_child, group_members
from pipelines.kubeflow import follow_kubeflow, kfp_status
from pipelines.train import StepReport
from services.core import progress
from services.core.jobstate import Status
from services.core.jobstore import JobStore, RunStore
from services.core.jobstore.runs import log_chunk_key
from services.core.runstate import can_move, merge_progress, sources
from services.core.storage import LocalStorage


@pytest.fixture
def runs(tmp_path) -> RunStore:
    return RunStore.of(JobStore.connect(f"sqlite:///{tmp_path}/jobs.db"))


@pytest.fixture
def storage(tmp_path) -> LocalStorage:
    return LocalStorage(tmp_path / "objects")


def read_log(storage: LocalStorage, folder: str) -> str:
    chunks, number = [], 0
    while storage.exists(log_chunk_key(folder, number)):
        chunks.append(storage.get_bytes(log_chunk_key(folder, number)))
        number += 1
    return b"".join(chunks).decode()


def test_progress_merges_key_by_key_and_results_get_their_columns() -> None:
    first, _ = merge_progress({}, {"pipeline_step": "train", "step": 10, "loss": 2.0})
    merged, columns = merge_progress(
        first, {"step": 20, "loss": None, "model": "m", "version": 3, "decision": '{"ok": 1}'}
    )
    assert merged["pipeline_step"] == "train" and merged["step"] == 20
    assert merged["loss"] == 2.0  # a None never erases what an earlier line said
    assert columns == {"model": "m", "version": "3", "decision": {"ok": 1}}


def test_the_state_machine_moves_forward_only() -> None:
    assert can_move("queued", "running") and can_move("running", "succeeded")
    assert can_move("queued", "cancelled") and not can_move("succeeded", "running")
    assert not can_move("cancelled", "running") and not can_move("running", "queued")
    assert set(sources(Status.CANCELLED)) == {Status.QUEUED, Status.RUNNING}


def test_output_lines_name_the_step_and_progress() -> None:
    assert fields_of('    MOSS_PROGRESS {"step": 3}\n') == {"step": 3}  # a kfp.local task's
    assert fields_of('MOSS_PROGRESS {"step": 4}\n') == {"step": 4}  # a pod's, the runner's
    kfp_line = "02:00:09.123 - INFO - Executing task \x1b[96m'evaluate'\x1b[0m\n"
    assert fields_of(kfp_line) == {"pipeline_step": "evaluate"}
    assert fields_of("step 3/4 loss 1.0\n") is None


CRAFTED = 'x MOSS_PROGRESS {"model": "evil", "version": "99", "decision": {"promoted": true}}'


@pytest.mark.parametrize(
    "line",
    [f"    {CRAFTED}: the clip could not be decoded [invalid_audio]\n",  # the annotate step's
     f"    {CRAFTED}\n",  # the prefix inside the line, the object its end
     '        MOSS_PROGRESS {"version": "99"}\n',  # more than kfp.local's indent
     '    MOSS_PROGRESS {"version": "99"} trailing\n',
     "    Executing task 'register'\n"],  # a task's output naming a step
)  # fmt: skip
def test_a_line_that_only_contains_the_prefix_is_not_progress(line) -> None:
    assert fields_of(line) is None


def test_a_clip_id_with_a_line_break_cannot_start_a_progress_line() -> None:
    """What kfp.local does with a task's output: each line read, printed after four spaces."""
    clip = 'x\nMOSS_PROGRESS {"version": "99"}\r'
    printed = progress.one_line(f"{clip}: the clip could not be decoded [invalid_audio]")
    seen = ["    " + line for line in io.StringIO(printed + "\n", newline=None)]
    assert len(seen) == 1 and [fields_of(line) for line in seen] == [None]
    assert "\\n" in printed and "\\r" in printed  # shown escaped, not dropped


def test_a_failure_names_the_steps_exception_not_kfps_wrapper() -> None:
    lines = [
        "    ValueError: 57 examples: fewer than one batch of 1000\n",
        "02:04:47 - ERROR - Task \x1b[96m'train'\x1b[0m finished with status FAILURE",
        "RuntimeError: Pipeline 'moss-audio-sft' finished with status FAILURE. Inner task failed",
    ]
    message = failure_message(lines, 1)
    assert message == "ValueError: 57 examples: fewer than one batch of 1000 (task train)"
    assert failure_message(["nothing useful"], 3) == "the pipeline exited with code 3"


def test_the_trainer_reports_every_ten_steps_the_first_and_the_last() -> None:
    out = io.StringIO()
    report = StepReport(25, stream=out)
    for step in range(1, 26):
        report(step, {"loss": 3.0 / step, "lr": 1e-3})
    lines = out.getvalue().splitlines()
    found = [progress.parse(line) for line in lines if progress.parse(line)]
    assert [f["step"] for f in found] == [1, 10, 20, 25]
    assert found[-1]["total_steps"] == 25 and found[-1]["eta_s"] == 0
    assert found[0]["loss"] == 3.0 and found[0]["lr"] == 1e-3 and found[0]["eta_s"] >= 0
    assert "step 10/25 loss 0.300 lr 1.00e-03 eta" in lines[2]  # people's line, then the object
    report = StepReport(100, stream=(cut := io.StringIO()))
    report(1, {"loss": 1.0})
    report(7, {"loss": 0.5})  # the clock ended training here
    report.finish(7, 0.5)
    assert progress.parse(cut.getvalue().splitlines()[-1])["step"] == 7


CHILD = r"""
import json, subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("02:00:09.123 - INFO - Executing task 'train'", flush=True)
print("MOSS_PROGRESS " + json.dumps({"step": 1, "total_steps": 9, "loss": 4.5,
      "grandchild": grandchild.pid}), flush=True)
if sys.argv[1] == "fail":
    print("ValueError: no data", flush=True)
    sys.exit(1)
if sys.argv[1] == "ok":
    print("MOSS_PROGRESS " + json.dumps({"step": 9, "loss": 0.5, "model": "m", "version": "2"}))
    grandchild.kill()
    sys.exit(0)
time.sleep(120)
"""


def start_child(mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def test_a_child_is_followed_to_its_end_with_log_and_progress(runs, storage) -> None:
    run = runs.create("acme", "sft", {}, "local")
    runs.start(run.id)
    outcome = follow_child(start_child("ok"), runs, run.id, RunLog(storage, run.log_key))
    assert outcome.status == Status.SUCCEEDED and outcome.error is None
    record = runs.get(run.id)
    assert record.progress["pipeline_step"] == "train" and record.progress["step"] == 9
    assert (record.model, record.version) == ("m", "2") and record.progress["loss"] == 0.5
    assert "Executing task 'train'" in read_log(storage, run.log_key)


def test_a_failed_child_says_why(runs, storage) -> None:
    run = runs.create("acme", "sft", {}, "local")
    runs.start(run.id)
    outcome = follow_child(start_child("fail"), runs, run.id, RunLog(storage, run.log_key))
    assert outcome.status == Status.FAILED
    assert outcome.error == {"code": "pipeline_failed", "message": "ValueError: no data"}


def test_cancel_stops_the_childs_whole_process_group(runs, storage) -> None:
    run = runs.create("acme", "sft", {}, "local")
    runs.start(run.id)
    child = start_child("hang")
    follower = threading.Thread(
        target=lambda: result.append(
            follow_child(child, runs, run.id, RunLog(storage, run.log_key))
        )
    )
    result: list = []
    follower.start()
    deadline = time.monotonic() + 30
    while "grandchild" not in runs.get(run.id).progress and time.monotonic() < deadline:
        time.sleep(0.05)
    grandchild = runs.get(run.id).progress["grandchild"]
    assert runs.request_cancel(run.id)
    follower.join(30)
    assert result and result[0].status == Status.CANCELLED
    assert child.poll() is not None
    assert group_members(child.pid) == []  # nothing of the group runs: the grandchild neither
    assert not os.path.exists(f"/proc/{grandchild}") or _zombie(grandchild)
    assert "cancel requested" in read_log(storage, run.log_key)


def _zombie(pid: int) -> bool:
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[-1].startswith("Z")


@pytest.mark.parametrize(
    ("state", "status"),
    [("PENDING", "running"), ("RUNNING", "running"), ("CANCELING", "running"),
     ("SUCCEEDED", "succeeded"), ("SKIPPED", "succeeded"), ("FAILED", "failed"),
     ("CANCELED", "cancelled"), ("SOMETHING_NEW", "running"), (None, "running")],
)  # fmt: skip
def test_kfp_states_map_to_ours(state, status) -> None:
    assert kfp_status(state) == status


class FakeKfp:
    """Answers like the KFP v2beta1 REST API for one run: its states in turn, then the last."""

    def __init__(self, states: list[str], error: str | None = None, tasks=None) -> None:
        self.states, self.error, self.terminated, self.reads = list(states), error, [], 0
        self.tasks, self.refuse_terminate = tasks, 0  # refused (HTTP 503) this many times
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/apis/v2beta1/healthz"):  # the client asks first
                    return self._answer(200, {"multi_user": False})
                if not self.path.startswith("/apis/v2beta1/runs/"):
                    return self._answer(404, {"error": "not found"})
                fake.reads += 1
                state = fake.states.pop(0) if len(fake.states) > 1 else fake.states[0]
                tasks = fake.tasks(state) if fake.tasks else [
                    {"display_name": "moss-audio-sft", "state": "RUNNING",
                     "child_tasks": [{"task_id": "t1"}]},
                    {"display_name": "train", "state": "RUNNING", "create_time": "2026-01-01"},
                ]  # fmt: skip
                body = {"run_id": self.path.rsplit("/", 1)[-1], "state": state,
                        "run_details": {"task_details": tasks}}  # fmt: skip
                if fake.error and state == "FAILED":
                    body["error"] = {"code": 2, "message": fake.error}
                self._answer(200, body)

            def do_POST(self) -> None:
                fake.terminated.append(self.path)
                if fake.refuse_terminate > 0:
                    fake.refuse_terminate -= 1
                    return self._answer(503, {"error": "terminate unavailable", "code": 14})
                self._answer(200, {})

            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self):
        import kfp

        return kfp.Client(host=f"http://127.0.0.1:{self.server.server_port}")


@pytest.fixture
def kfp_api():
    servers = []

    def make(states, error=None, tasks=None):
        servers.append(FakeKfp(states, error, tasks))
        return servers[-1]

    yield make
    for fake in servers:
        fake.server.shutdown()


def test_a_kubeflow_run_is_polled_to_its_end(kfp_api, runs, storage) -> None:
    fake = kfp_api(["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"])
    run = runs.create("acme", "sft", {}, "kubeflow")
    runs.start(run.id)
    log = RunLog(storage, run.log_key)
    outcome = follow_kubeflow(fake.client(), "kfp-1", runs, run.id, log, 0.01)
    assert outcome.status == Status.SUCCEEDED and fake.reads == 4
    record = runs.get(run.id)
    assert record.progress["pipeline_step"] == "train"
    assert record.progress["kubeflow_state"] == "SUCCEEDED"
    text = read_log(storage, run.log_key)
    assert "kfp-1 PENDING" in text and "kfp-1 RUNNING (train)" in text


def test_a_failed_kubeflow_run_keeps_kfps_error(kfp_api, runs, storage) -> None:
    fake = kfp_api(["RUNNING", "FAILED"], error="train: OOMKilled")
    run = runs.create("acme", "sft", {}, "kubeflow")
    runs.start(run.id)
    outcome = follow_kubeflow(fake.client(), "kfp-2", runs, run.id, RunLog(storage, run.log_key),
                              0.01)  # fmt: skip
    assert outcome.status == Status.FAILED and outcome.error["message"] == "train: OOMKilled"


def test_cancelling_a_kubeflow_run_terminates_it_through_the_api(kfp_api, runs, storage) -> None:
    fake = kfp_api(["RUNNING"])
    run = runs.create("acme", "sft", {}, "kubeflow")
    runs.start(run.id)

    def cancel_after_two_reads(_seconds: float) -> None:
        if fake.reads >= 2:
            runs.request_cancel(run.id)

    outcome = follow_kubeflow(fake.client(), "kfp-3", runs, run.id, RunLog(storage, run.log_key),
                              0.01, sleep=cancel_after_two_reads)  # fmt: skip
    assert outcome.status == Status.CANCELLED
    assert fake.terminated == ["/apis/v2beta1/runs/kfp-3:terminate"]


def sft_tasks(state: str) -> list[dict]:
    """The sft pipeline's leaf tasks as KFP lists them: train done, then evaluate in `state`."""
    evaluate = {"display_name": "evaluate", "state": state, "create_time": "2026-01-01T00:02"}
    if state == "FAILED":
        evaluate["error"] = {"code": 9, "message": "exit status 1"}
    return [
        {"display_name": "moss-audio-sft", "state": state, "child_tasks": [{"task_id": "t1"}]},
        {"display_name": "train", "state": "SUCCEEDED", "create_time": "2026-01-01T00:01"},
        evaluate,
    ]


def test_a_kubeflow_runs_record_has_its_tasks_states_and_the_failed_task(
    kfp_api, runs, storage
) -> None:
    fake = kfp_api(["RUNNING", "FAILED"], tasks=sft_tasks)
    run = runs.create("acme", "sft", {}, "kubeflow")
    runs.start(run.id)
    outcome = follow_kubeflow(fake.client(), "kfp-4", runs, run.id, RunLog(storage, run.log_key),
                              0.01)  # fmt: skip
    assert outcome.error == {"code": "pipeline_failed", "message": "exit status 1 (task evaluate)"}
    progress = runs.get(run.id).progress
    assert progress["tasks"] == {"train": "SUCCEEDED", "evaluate": "FAILED"}
    assert progress["pipeline_step"] == "evaluate" and progress["kubeflow_state"] == "FAILED"


def test_a_terminate_kfp_refuses_leaves_the_run_running_until_one_succeeds(
    kfp_api, runs, storage
) -> None:
    """Ended as failed while the Kubeflow run went on before: now the refusal is recorded,
    the run stays running with its cancel requested, and the next poll tries again."""
    fake = kfp_api(["RUNNING"])
    fake.refuse_terminate = 2
    run = runs.create("acme", "sft", {}, "kubeflow")
    runs.start(run.id)
    runs.request_cancel(run.id)
    seen: list = []

    def look(_seconds: float) -> None:
        record = runs.get(run.id)
        seen.append((record.status, record.cancel_requested, record.progress.get("cancel_failed")))

    outcome = follow_kubeflow(fake.client(), "kfp-5", runs, run.id, RunLog(storage, run.log_key),
                              0.01, sleep=look)  # fmt: skip
    assert outcome.status == Status.CANCELLED
    assert fake.terminated == ["/apis/v2beta1/runs/kfp-5:terminate"] * 3
    assert len(seen) == 2 and all(s[:2] == ("running", True) and s[2] for s in seen)
    assert "terminate unavailable" in seen[0][2]
    assert read_log(storage, run.log_key).count("failed (") == 1  # said once, not each poll


def test_a_kubeflow_host_with_credentials_never_reaches_the_tenant(runs, storage) -> None:
    from pipelines.worker import run_pipeline
    from services.core.settings import Settings

    settings = Settings(kfp_host="http://ops:s3cret-pw@127.0.0.1:1")  # nothing listens there
    run = runs.create("acme", "sft", {}, "kubeflow")
    assert run_pipeline(settings, run.id, runs, storage) == Status.FAILED
    record = runs.get(run.id)
    assert record.error["code"] == "submit_failed" and "***@127.0.0.1:1" in record.error["message"]
    assert "s3cret" not in json.dumps(record.error) + read_log(storage, run.log_key)


def test_the_sweeper_fails_a_run_whose_worker_is_gone_and_spares_a_followed_one(tmp_path) -> None:
    from services.core.settings import Settings
    from services.jobs.context import Context
    from services.jobs.sweeper import sweep

    store = JobStore.connect(f"sqlite:///{tmp_path}/jobs.db")
    runs = RunStore.of(store)
    ctx = Context(settings=Settings(home=tmp_path, sweep_after_s=1), store=store,
                  storage=LocalStorage(tmp_path / "o"), enqueue=lambda *a, **k: None,
                  live_workers=lambda: {"pipelines-1@alive"})  # fmt: skip
    gone, followed, young = (runs.create("acme", "sft", {}, "local") for _ in range(3))
    runs.start(gone.id, worker="pipelines-1@dead")
    runs.start(followed.id, worker="pipelines-1@alive")
    time.sleep(1.1)
    runs.start(young.id, worker="pipelines-2@missed-a-ping")  # touched just now
    sweep(ctx)
    assert runs.get(gone.id).status == "failed" and runs.get(gone.id).error["code"] == "worker_lost"
    assert runs.get(followed.id).status == runs.get(young.id).status == "running"
    ctx.live_workers = lambda: None  # the broker away: nobody can be told dead
    runs.start(other := runs.create("acme", "sft", {}, "local").id, worker="pipelines-3@x")
    time.sleep(1.1)
    sweep(ctx)
    assert runs.get(other).status == "running"


def test_the_sweeper_sends_a_queued_run_whose_message_was_lost_again_once(tmp_path) -> None:
    """A message lost (the broker restarted, or a worker died between taking it and starting
    the run) left the run queued for ever; it never started, so it is sent again, once per
    MOSS_LOST_MESSAGE_AFTER_S, only while the `pipelines` queue is empty."""
    from services.core.settings import Settings
    from services.jobs.context import Context
    from services.jobs.sweeper import sweep

    store = JobStore.connect(f"sqlite:///{tmp_path}/jobs.db")
    runs, sent, depth = RunStore.of(store), [], {"pipelines": 0}
    ctx = Context(settings=Settings(home=tmp_path, lost_message_after_s=0.5), store=store,
                  storage=LocalStorage(tmp_path / "o"), enqueue=lambda *a, **k: None,
                  queue_depth=lambda queue: depth[queue],
                  enqueue_pipeline=lambda *message: sent.append(message))  # fmt: skip
    lost = runs.create("acme", "sft", {"steps": 3}, "local")
    started = runs.create("acme", "sft", {}, "local")
    runs.start(started.id, worker="pipelines-1@alive")
    runs.request_cancel(cancelled := runs.create("acme", "sft", {}, "local").id)
    sweep(ctx)
    assert sent == []  # too young: its message may be on its way
    time.sleep(0.6)
    depth["pipelines"] = 1  # a message waits: the run waits its turn
    sweep(ctx)
    assert sent == []
    depth["pipelines"] = 0
    sweep(ctx)
    sweep(ctx)  # at once again: the run's wait started over when it was sent
    assert sent == [(lost.id, "sft", {"steps": 3})]
    assert runs.get(lost.id).status == "queued" and runs.get(cancelled).status == "cancelled"
    assert runs.start(lost.id) and not runs.start(lost.id)  # the duplicate starts nothing
