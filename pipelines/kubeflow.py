"""Following a run on Kubeflow Pipelines (MOSS_KFP_HOST): its status from the KFP API.

The pipeline worker submits the run (pipelines.runner.submit), then polls
`GET /apis/v2beta1/runs/{id}` (`kfp.Client.get_run`) and maps the run's state to ours; the task
now running names the pipeline step. A cancel request terminates the run through the API
(`POST /apis/v2beta1/runs/{id}:terminate`, `kfp.Client.terminate_run`). The steps' progress
lines go to the pods' logs on the cluster, which the KFP API does not serve: a Kubeflow run's
record has its status, its current task and its results, not the training loss (docs/
pipelines.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from services.core.jobstate import Status
from services.core.jobstore import RunStore
from services.core.runstate import FINAL

from .follow import Outcome, RunLog

# V2beta1RuntimeState -> our status. Waiting, running, paused and cancelling runs are still
# running for us (the worker holds them); SKIPPED is a run with nothing to do: it succeeded.
KFP_STATES: dict[str, Status] = {
    "RUNTIME_STATE_UNSPECIFIED": Status.RUNNING,
    "PENDING": Status.RUNNING,
    "RUNNING": Status.RUNNING,
    "PAUSED": Status.RUNNING,
    "CANCELING": Status.RUNNING,
    "SUCCEEDED": Status.SUCCEEDED,
    "SKIPPED": Status.SUCCEEDED,
    "FAILED": Status.FAILED,
    "CANCELED": Status.CANCELLED,
}
UNREACHABLE_FOR_S = 300.0  # how long the KFP API may fail to answer before the run is failed


def kfp_status(state: Any) -> Status:
    """Our status for a KFP run state (an unknown state: still running, keep asking)."""
    name = str(getattr(state, "value", state) or "").upper().removeprefix("RUNTIMESTATE.")
    return KFP_STATES.get(name, Status.RUNNING)


def running_task(run: Any) -> str | None:
    """The display name of the leaf task that runs now (the latest started), if any."""
    tasks = getattr(getattr(run, "run_details", None), "task_details", None) or []
    leaves = [
        task
        for task in tasks
        if str(getattr(task, "state", "")).upper() == "RUNNING" and not task.child_tasks
    ]
    leaves.sort(key=lambda task: str(getattr(task, "create_time", "") or ""))
    return leaves[-1].display_name if leaves else None


def follow_kubeflow(
    client: Any,
    kfp_run_id: str,
    runs: RunStore,
    run_id: str,
    log: RunLog,
    poll_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Poll a submitted run until it ends (or is cancelled); the outcome to record."""
    seen: tuple[str, str | None] | None = None
    failing_since: float | None = None
    while True:
        if runs.cancel_requested(run_id):
            client.terminate_run(kfp_run_id)
            log.line(f"moss: cancel requested; Kubeflow run {kfp_run_id} terminated")
            log.flush()
            return Outcome(Status.CANCELLED, {"code": "cancelled", "message": "cancelled on "
                           "request (terminated on Kubeflow)"})  # fmt: skip
        try:
            run = client.get_run(kfp_run_id)
            runs.touch(run_id)  # still followed: the sweeper spares it
            failing_since = None
        except Exception as exc:  # the API away for a moment: ask again, for a while
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > UNREACHABLE_FOR_S:
                return Outcome(Status.FAILED, {"code": "kubeflow_unreachable", "message":
                               f"the KFP API stopped answering: {exc}"})  # fmt: skip
            sleep(poll_s)
            continue
        state = str(getattr(run.state, "value", run.state))
        status, task = kfp_status(state), running_task(run)
        if (state, task) != seen:
            seen = (state, task)
            log.line(f"moss: Kubeflow run {kfp_run_id} {state}" + (f" ({task})" if task else ""))
            fields = {"kubeflow_state": state, "pipeline_step": task}
            runs.add_progress(run_id, {k: v for k, v in fields.items() if v})
            log.flush()
        if status in FINAL:
            return Outcome(status, _error(run) if status == Status.FAILED else None)
        sleep(poll_s)


def _error(run: Any) -> dict[str, str]:
    message = getattr(getattr(run, "error", None), "message", None)
    return {"code": "pipeline_failed", "message": message or "the Kubeflow run failed"}
