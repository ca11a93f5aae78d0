"""Progress lines: how a pipeline step tells the pipeline worker where a run stands.

A run's steps execute in child processes (kfp.local subprocesses, or pods on Kubeflow) whose only
channel back that works everywhere is their output. So a step prints one line per update,
`MOSS_PROGRESS {json}` (the whole line), among its ordinary log lines; the pipeline worker reads
the run's output as it streams, keeps the log as is, and merges each object it finds into the
run's record (what `GET /v1/pipelines/runs/{id}` answers). The same lines reach a Kubeflow
run's pod logs.

Keys (all optional; a later line overrides an earlier one key by key):
- `pipeline_step`: the pipeline step now running (`train`, `evaluate`, `register`, `import`, ...)
- `step`, `total_steps`, `loss`, `lr`, `eta_s`: training (or any counted work) progress
- `message`: a short human line (what the step is doing)
- results: `mlflow_run_id`, `model`, `version`, `decision` (the gate's decision record)
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, TextIO

PREFIX = "MOSS_PROGRESS "
KFP_LOCAL_INDENT = "    "  # kfp.local prints each line of a task's output after four spaces
LINE = re.compile(rf"(?:{KFP_LOCAL_INDENT})?{PREFIX}(\{{.*\}})[ \t]*")
# what str.splitlines (and so kfp.local's and the worker's line reading) treats as a break
BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def emit(stream: TextIO | None = None, **fields: Any) -> None:
    """Print one progress line (flushed at once: the worker follows the output live)."""
    line = PREFIX + json.dumps({k: v for k, v in fields.items() if v is not None}, default=str)
    print(line, file=stream or sys.stdout, flush=True)


def parse(line: str) -> dict[str, Any] | None:
    """The fields of a progress line; None for any other line, or one that is not a JSON object.

    The prefix counts only at the very start of the line, or after exactly kfp.local's own
    prefix for a task's output (four spaces: kfp.local.logging_utils.indented_print around each
    task), and the object must be the rest of the line. A line that merely contains the prefix
    (a failure line quoting a manifest's clip id, say) is not progress: the record's `model`,
    `version` and `decision` are what the steps reported, not what a dataset says."""
    found = LINE.fullmatch(line.rstrip("\r\n"))
    if found is None:
        return None
    try:
        fields = json.loads(found.group(1))
    except ValueError:
        return None
    return fields if isinstance(fields, dict) else None


def one_line(text: Any) -> str:
    """`text` with its line breaks escaped, for a step printing what a dataset supplied (a clip
    id): a break would start a new output line, which could be read as progress."""
    return BREAKS.sub(lambda found: found.group().encode("unicode_escape").decode(), str(text))
