"""Following a run on Kubeflow Pipelines (MOSS_KFP_HOST): its status from the KFP API, what it
made from MLflow.

The pipeline worker submits the run (pipelines.runner.submit), then polls
`GET /apis/v2beta1/runs/{id}` (`kfp.Client.get_run`) and maps the run's state to ours; the task
now running names the pipeline step, and each leaf task's state is kept (`tasks`). A cancel
request terminates the run through the API (`POST /apis/v2beta1/runs/{id}:terminate`,
`kfp.Client.terminate_run`); a terminate KFP refuses leaves the run running, its cancel still
requested. The steps' progress lines go to the pods' logs, which the v2beta1 API does not serve;
the train step tags its MLflow run with our run id, so the loss, the MLflow run, the registered
version and the gate's decision are read from MLflow instead (pipelines.tracking), beside the
loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from services.core.jobstate import Status
from services.core.jobstore import RunStore
from services.core.logs import redact_url
from services.core.runstate import FINAL

from .follow import Outcome, RunLog
from .tracking import Tracked

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


def leaf_tasks(run: Any) -> list[Any]:
    """The run's tasks that do work (not the DAGs around them), oldest first."""
    tasks = getattr(getattr(run, "run_details", None), "task_details", None) or []
    leaves = [task for task in tasks if not getattr(task, "child_tasks", None)]
    return sorted(leaves, key=lambda task: str(getattr(task, "create_time", "") or ""))


def _state(task: Any) -> str:
    state = getattr(task, "state", None)
    return str(getattr(state, "value", state) or "").upper().removeprefix("RUNTIMESTATE.")


def running_task(run: Any) -> str | None:
    """The display name of the leaf task that runs now (the latest started), if any."""
    leaves = [task for task in leaf_tasks(run) if _state(task) == "RUNNING"]
    return leaves[-1].display_name if leaves else None


def run_fields(run: Any) -> dict[str, Any]:
    """What the KFP API says of a run, for its record: its state, the task now running
    (`pipeline_step`) and every leaf task's state (`tasks`, display name -> KFP state). The
    v2beta1 API gives no more: a task's outputs are artifact ids, its parameters and the
    steps' progress lines stay in ML Metadata and the pods' logs."""
    tasks = {task.display_name: _state(task) for task in leaf_tasks(run) if task.display_name}
    fields = {"kubeflow_state": _state(run), "pipeline_step": running_task(run), "tasks": tasks}
    return {key: value for key, value in fields.items() if value}


def follow_kubeflow(
    client: Any,
    kfp_run_id: str,
    runs: RunStore,
    run_id: str,
    log: RunLog,
    poll_s: float,
    sleep: Callable[[float], None] = time.sleep,
    tracked: Tracked | None = None,
) -> Outcome:
    """Poll a submitted run until it ends (or is cancelled); the outcome to record.

    The store or the KFP API away a moment never ends the run here: the Kubeflow run goes on,
    so it is asked again (a cancel that KFP refused stays requested, and is tried each poll).
    `tracked` reads what the run made from MLflow; MLflow away only leaves those fields out."""
    seen: dict[str, Any] | None = None
    said: tuple[Any, ...] = (None, None, None)  # state, task, training step logged last
    failing_since: float | None = None
    cancel_error: list[str] = []
    while True:
        if _quietly(runs.cancel_requested, run_id) and _terminate(
            client, kfp_run_id, runs, run_id, log, cancel_error
        ):
            return Outcome(Status.CANCELLED, {"code": "cancelled", "message": "cancelled on "
                           "request (terminated on Kubeflow)"})  # fmt: skip
        try:
            run = client.get_run(kfp_run_id)
            failing_since = None
        except Exception as exc:  # the API away for a moment: ask again, for a while
            failing_since = failing_since or time.monotonic()
            if time.monotonic() - failing_since > UNREACHABLE_FOR_S:
                why = redact_url(str(exc))  # the host may carry credentials
                return Outcome(Status.FAILED, {"code": "kubeflow_unreachable", "message":
                               f"the KFP API stopped answering: {why}"})  # fmt: skip
            sleep(poll_s)
            continue
        _quietly(runs.touch, run_id)  # still followed: the sweeper spares it
        fields = run_fields(run)
        status = kfp_status(fields.get("kubeflow_state"))
        if tracked is not None:
            made = tracked.final() if status in FINAL else tracked.poll()
            fields = {**made, **fields}
        if fields != seen:
            said = _log_change(log, kfp_run_id, fields, said)
            seen = fields if _quietly(runs.add_progress, run_id, fields) else None
            log.flush()
        if status in FINAL:
            return Outcome(status, _error(run) if status == Status.FAILED else None)
        sleep(poll_s)


def _log_change(log: RunLog, kfp_run_id: str, fields: dict[str, Any], said: tuple) -> tuple:
    """A log line for a new state or running task, and one for a new training step (read from
    MLflow); returns what has now been said."""
    state, task = fields.get("kubeflow_state"), fields.get("pipeline_step")
    step = fields.get("step")
    if (state, task) != said[:2]:
        log.line(f"moss: Kubeflow run {kfp_run_id} {state}" + (f" ({task})" if task else ""))
    if step is not None and step != said[2] and "loss" in fields:
        total = fields.get("total_steps")
        log.line(f"moss: step {step}{f'/{total}' if total else ''} loss {fields['loss']:.3f}"
                 " (MLflow)")  # fmt: skip
    return state, task, step


def _terminate(
    client: Any, kfp_run_id: str, runs: RunStore, run_id: str, log: RunLog, said: list[str]
) -> bool:
    """Terminate the Kubeflow run of a cancelled one; False when KFP refused or could not be
    reached: the run goes on there, so ours stays running with its cancel requested, and the
    refusal is in its progress (`cancel_failed`) and log until a later try succeeds."""
    try:
        client.terminate_run(kfp_run_id)
    except Exception as exc:
        reason = _reason(exc)
        if said[-1:] != [reason]:
            said.append(reason)
            log.line(f"moss: cancel requested; terminating Kubeflow run {kfp_run_id} failed "
                     f"({reason}); trying again")  # fmt: skip
            log.flush()
            _quietly(runs.add_progress, run_id, {"cancel_failed": reason, "message":
                     "cancel requested; Kubeflow has not stopped the run yet"})  # fmt: skip
        return False
    log.line(f"moss: cancel requested; Kubeflow run {kfp_run_id} terminated")
    log.flush()
    return True


def _reason(exc: Exception) -> str:
    """One short line for an error of the KFP client (its ApiException's text spans lines,
    headers included: the status and the body say it)."""
    status, body = getattr(exc, "status", None), getattr(exc, "body", None)
    detail = " ".join(str(body or exc).split())
    return redact_url(f"{type(exc).__name__}{f' {status}' if status else ''}: {detail}")[:300]


def _quietly(call: Callable[..., Any], *args: Any) -> bool:
    """A run-store call of the follow loop; the database away a moment: False, asked again
    at the next poll (the Kubeflow run goes on either way)."""
    try:
        return bool(call(*args))
    except Exception:
        return False


def _error(run: Any) -> dict[str, str]:
    """KFP's error for the run, else the failed task's, naming the task."""
    message = getattr(getattr(run, "error", None), "message", None)
    failed = [task for task in leaf_tasks(run) if _state(task) == "FAILED"]
    if failed:
        task = failed[-1]
        message = message or getattr(getattr(task, "error", None), "message", None)
        message = f"{message or 'the task failed'} (task {task.display_name})"
    return {"code": "pipeline_failed", "message": redact_url(message or "the Kubeflow run failed")}
