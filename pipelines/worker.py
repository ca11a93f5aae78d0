"""The pipeline worker: runs the pipeline runs the gateway queued (`pipelines` queue).

    celery -A pipelines.worker worker -Q pipelines -P threads -c 1

Each message names a run the gateway has recorded (services.core.jobstore.runs). The worker
takes it (queued -> running; a cancelled run is skipped), then either runs it here with
kfp.local in a child process (`python -m pipelines.runner`, in a session of its own) that it
follows line by line (pipelines.follow: the log into the object store, progress into the run's
record, cancel by terminating the process group), or, with MOSS_KFP_HOST, submits it to
Kubeflow and polls its state there (pipelines.kubeflow). Then it records how the run ended. The
gateway never starts processes and never imports this package; it only leaves a message.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from celery.signals import worker_init, worker_ready

from services.core.events import events_for
from services.core.jobstate import Status
from services.core.jobstore import JobStore, RunStore
from services.core.logs import redact_url
from services.core.queue import PIPELINE_NAMES, PIPELINE_TASK, make_celery
from services.core.settings import Settings, get_settings
from services.core.storage import Storage, make_storage

from .follow import Outcome, RunLog, follow_child, terminate_group
from .tracking import Tracked, tracked_fields

log = logging.getLogger("moss.pipelines")
settings = get_settings()
app = make_celery(settings)
_node: dict[str, str] = {}  # this process's Celery node name, once the worker starts
_stores: dict[str, tuple[RunStore, Storage]] = {}
_lock = threading.Lock()


def stores(settings: Settings) -> tuple[RunStore, Storage]:
    """The run store and the object store of this process (made once)."""
    with _lock:
        if "main" not in _stores:
            jobs = JobStore.connect(
                settings.resolved_database_url, events=events_for(settings.redis_url)
            )
            _stores["main"] = (RunStore.of(jobs), make_storage(settings))
        return _stores["main"]


def run_pipeline(
    settings: Settings,
    run_id: str,
    runs: RunStore,
    storage: Storage,
    worker: str | None = None,
) -> Status | None:
    """One queued run, to its end; the status it ended with (None: not this worker's to run:
    cancelled while queued, or started by an earlier delivery). Never raises for a failed
    run: the run's record and log say what happened, and a failed run is not retried
    (training is not idempotent)."""
    run = runs.get(run_id)
    if run is None or not runs.start(run_id, worker=worker):
        log.info("pipeline run %s skipped (%s)", run_id, "unknown" if run is None else run.status)
        return None
    output = RunLog(storage, run.log_key)
    try:
        if run.name not in PIPELINE_NAMES:
            outcome = Outcome(Status.FAILED, {"code": "unknown_pipeline",
                              "message": f"no pipeline {run.name!r}"})  # fmt: skip
        elif settings.kfp_host:
            outcome = _on_kubeflow(settings, run, runs, output)
        else:
            outcome = _locally(settings, run, runs, output)
    except Exception as exc:  # the worker's own trouble (the store, the object store, KFP)
        log.exception("pipeline run %s could not be followed", run_id)
        outcome = Outcome(Status.FAILED, {"code": "pipeline_error",
                          "message": redact_url(f"{exc!r}")})  # fmt: skip
    ending = f"moss: run {run_id} {outcome.status}"
    if outcome.error and outcome.status == Status.FAILED:
        ending += f": {outcome.error['message']}"
    output.line(ending)
    output.flush()  # the last chunk before the end: a reader that sees the end has it all
    runs.finish(run_id, outcome.status, outcome.error)
    log.info("pipeline %s run %s ended %s", run.name, run_id, outcome.status)
    return outcome.status


def _locally(settings: Settings, run, runs: RunStore, output: RunLog) -> Outcome:
    """kfp.local in a child process of its own session (its group is what a cancel stops)."""
    root = settings.home.resolve() / "kfp" / run.id
    argv = [sys.executable, "-m", "pipelines.runner", run.name, json.dumps(run.params), str(root)]
    output.line(f"moss: run {run.id}: {run.name} with kfp.local, outputs under {root}")
    process = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONUNBUFFERED": "1", "MOSS_PIPELINE_RUN_ID": run.id},
        start_new_session=True,
    )
    try:
        return follow_child(process, runs, run.id, output)
    finally:
        if process.poll() is None:  # following failed: no run may go on without its worker
            terminate_group(process)


def _on_kubeflow(settings: Settings, run, runs: RunStore, output: RunLog) -> Outcome:
    import kfp

    from .kubeflow import follow_kubeflow
    from .runner import submit

    host = redact_url(settings.kfp_host)  # the tenant reads the error and the log
    try:
        kfp_run = submit(run.name, run.params, settings.kfp_host, run_id=run.id)
    except Exception as exc:
        return Outcome(Status.FAILED, {"code": "submit_failed", "message":
                       f"could not submit to {host}: {redact_url(str(exc))}"})  # fmt: skip
    runs.set_fields(run.id, kubeflow_run_id=kfp_run)
    output.line(f"moss: run {run.id}: submitted to {host} as {kfp_run}")
    output.flush()
    client = kfp.Client(host=settings.kfp_host)
    tracked = _tracked(settings, run)
    try:
        return follow_kubeflow(
            client, kfp_run, runs, run.id, output, settings.kfp_poll_s, tracked=tracked
        )
    except Exception:  # recorded failed: no Kubeflow run may go on without its worker
        with contextlib.suppress(Exception):
            client.terminate_run(kfp_run)
        raise
    finally:
        if tracked is not None:
            tracked.close()


def _tracked(settings: Settings, run) -> Tracked | None:
    """What the run makes, read from MLflow (pipelines.tracking); None without an MLflow
    server: the record then has the KFP fields only."""
    if not settings.mlflow_uri:
        return None
    import mlflow

    client = mlflow.MlflowClient(settings.mlflow_uri)
    promote_to = str(run.params.get("promote_to", ""))
    return Tracked(lambda: tracked_fields(client, run.id, promote_to))


@worker_init.connect
def _name(sender=None, **_) -> None:
    if sender is not None:
        _node["name"] = sender.hostname


@worker_ready.connect
def _recover(**_) -> None:
    """Fail what this node name held when its previous process died (the run's child died
    with it; starting it again is the user's call, not a redelivery's)."""
    if "name" not in _node:
        return
    try:
        for run_id in stores(settings)[0].fail_orphans(_node["name"]):
            log.warning("pipeline run %s failed: this worker's previous process died", run_id)
    except Exception:
        log.warning("could not check this worker's orphaned runs", exc_info=True)


@app.task(name=PIPELINE_TASK, acks_late=False)
def run(run_id: str, name: str, params: dict[str, Any]) -> str | None:
    # Acknowledged on receipt: a run that dies with its worker is not started twice (training is
    # not idempotent). The threads pool applies no Celery time limit: a run takes what it takes.
    # The run's record is the truth; `name` and `params` are in the message for older readers.
    runs, storage = stores(settings)
    status = run_pipeline(settings, run_id, runs, storage, worker=_node.get("name"))
    return None if status is None else str(status)
