"""The pipeline-run state machine, in one place: statuses, the allowed moves, and how a run's
progress lines (services.core.progress) become its record.

    queued ──▶ running ──▶ succeeded
       │          ├──────▶ failed       (also from queued: the queue could not take it)
       └──────────┴──────▶ cancelled    (queued: at once; running: once the worker stopped it)

The statuses are the jobs' (core.jobstate.Status), so a client reads one vocabulary; a run has
no stages, its `progress` says which pipeline step runs. The run store guards every move in SQL
with MOVES, so a redelivered message cannot start a run twice or move a finished one.
"""

from __future__ import annotations

from typing import Any

from .jobstate import Status

ACTIVE = (Status.QUEUED, Status.RUNNING)
FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
MOVES: dict[Status, tuple[Status, ...]] = {
    Status.QUEUED: (Status.RUNNING, Status.FAILED, Status.CANCELLED),
    Status.RUNNING: (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED),
    Status.SUCCEEDED: (),
    Status.FAILED: (),
    Status.CANCELLED: (),
}
# Progress keys that are results: they have columns of their own (and stay in `progress` too).
RESULT_COLUMNS = ("mlflow_run_id", "model", "version", "decision")


def sources(target: Status) -> tuple[Status, ...]:
    """The statuses a run may move to `target` from (the guard of the store's update)."""
    return tuple(status for status, allowed in MOVES.items() if target in allowed)


def can_move(current: str, target: str) -> bool:
    return Status(target) in MOVES[Status(current)]


def merge_progress(
    progress: dict[str, Any], fields: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's progress after one more progress object: key by key, the later value wins (None
    values are ignored, so a line cannot erase what an earlier one said). Returns the new
    progress and the result columns it sets (`decision` as an object: a step may print it as
    JSON text, as promote_step returns it)."""
    merged = dict(progress)
    columns: dict[str, Any] = {}
    for key, value in fields.items():
        if value is None:
            continue
        if key == "decision" and isinstance(value, str):
            value = _json_object(value)
        merged[key] = value
        if key in RESULT_COLUMNS:
            columns[key] = value if key == "decision" else str(value)
    return merged, columns


def _json_object(text: str) -> Any:
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"value": value}
