"""Progress lines: how a pipeline step tells the pipeline worker where a run stands.

A run's steps execute in child processes (kfp.local subprocesses, or pods on Kubeflow) whose only
channel back that works everywhere is their output. So a step prints one line per update,
`MOSS_PROGRESS {json}`, among its ordinary log lines; the pipeline worker reads the run's output
as it streams, keeps the log as is, and merges each object it finds into the run's record (what
`GET /v1/pipelines/runs/{id}` answers). The same lines reach a Kubeflow run's pod logs.

Keys (all optional; a later line overrides an earlier one key by key):
- `pipeline_step`: the pipeline step now running (`train`, `evaluate`, `register`, `import`, ...)
- `step`, `total_steps`, `loss`, `lr`, `eta_s`: training (or any counted work) progress
- `message`: a short human line (what the step is doing)
- results: `mlflow_run_id`, `model`, `version`, `decision` (the gate's decision record)
"""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO

PREFIX = "MOSS_PROGRESS "


def emit(stream: TextIO | None = None, **fields: Any) -> None:
    """Print one progress line (flushed at once: the worker follows the output live)."""
    line = PREFIX + json.dumps({k: v for k, v in fields.items() if v is not None}, default=str)
    print(line, file=stream or sys.stdout, flush=True)


def parse(line: str) -> dict[str, Any] | None:
    """The fields of a progress line, wherever it sits in the line (kfp.local prefixes task
    output with its own text); None for any other line or a line that is not a JSON object."""
    at = line.find(PREFIX)
    if at < 0:
        return None
    try:
        fields = json.loads(line[at + len(PREFIX) :].strip())
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None
