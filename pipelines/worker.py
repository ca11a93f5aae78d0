"""The pipeline worker: runs the pipeline runs the gateway queued (`pipelines` queue).

    celery -A pipelines.worker worker -Q pipelines -P threads -c 1

With MOSS_KFP_HOST set a run is submitted to Kubeflow; otherwise it runs here with kfp.local,
in a child process (`python -m pipelines.runner`) whose output goes to the run's log
(MOSS_HOME/logs/pipeline-NAME-RUNID.log). The gateway never starts processes and never imports
this package; it only leaves a message naming the run.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

from services.core.queue import PIPELINE_NAMES, PIPELINE_TASK, make_celery, pipeline_log
from services.core.settings import Settings, get_settings

log = logging.getLogger("moss.pipelines")
settings = get_settings()
app = make_celery(settings)


def run_pipeline(settings: Settings, run_id: str, name: str, params: dict[str, Any]) -> int:
    """One queued run, to the end; returns the exit code (0: done). Never raises for a failed
    run: its log says what happened, and a failed run is not retried (training is not
    idempotent)."""
    logfile = pipeline_log(settings, name, run_id)
    logfile.parent.mkdir(parents=True, exist_ok=True)
    with logfile.open("ab") as out:
        if name not in PIPELINE_NAMES:
            out.write(f"unknown pipeline {name!r}\n".encode())
            return 2
        if settings.kfp_host:
            from .runner import submit

            try:
                kfp_run = submit(name, params, settings.kfp_host)
            except Exception as exc:
                out.write(f"could not submit to {settings.kfp_host}: {exc!r}\n".encode())
                return 1
            out.write(json.dumps({"kubeflow_run_id": kfp_run}).encode() + b"\n")
            return 0
        root = settings.home.resolve() / "kfp" / run_id
        argv = [sys.executable, "-m", "pipelines.runner", name, json.dumps(params), str(root)]
        code = subprocess.call(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[1],
        )
    log.info("pipeline %s run %s ended with exit code %d", name, run_id, code)
    return code


@app.task(name=PIPELINE_TASK, acks_late=False)
def run(run_id: str, name: str, params: dict[str, Any]) -> int:
    # Acknowledged on receipt: a run that dies with its worker is not started twice (training is
    # not idempotent). The threads pool applies no Celery time limit: a run takes what it takes.
    return run_pipeline(settings, run_id, name, params)
