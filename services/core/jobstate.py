"""The job state machine, in one place: statuses, stages, the allowed moves, what runs next.

A job has a `status` (what a client sees) and a `stage` (where in the pipeline it is):

    status  queued ──▶ running ──▶ succeeded
               │          │  └───▶ failed      (also from queued: a bad upload, a gate)
               └──────────┴──────▶ cancelled

    stage   queued ─encode─▶ encoded ─generate─▶ done     (model tasks)
            queued ─annotate─▶ done                       (annotation jobs)
            (a stage is claimed from the stage before it; stale features send generate back to
            queued, and a dead worker's claim is released back to the stage before it)

The job store guards every move in SQL with these tables, so a redelivered task cannot move a
finished job and two workers cannot claim one stage. Workers finish a stage through `advance`,
the one function that decides which task is enqueued next.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Stage(StrEnum):
    QUEUED = "queued"  # accepted, waiting for the encoder
    ENCODE = "encode"  # the encoder holds it
    ENCODED = "encoded"  # features stored, waiting for a generator
    GENERATE = "generate"  # a generator holds it
    ANNOTATE = "annotate"  # the annotation worker holds it (annotation jobs)
    DONE = "done"


ACTIVE = (Status.QUEUED, Status.RUNNING)
FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)
# The stages a worker claims (each is also the name of its queue and task), the stage a job
# waits in before each, and the stage it reaches when the work is done. TASK_STAGES are the
# job path of model tasks (readiness needs a worker for each); annotation jobs have their own.
TASK_STAGES = (Stage.ENCODE, Stage.GENERATE)
ANNOTATION_TASK = "annotate"  # the job task of POST /v1/annotations
WAITING_FOR = {Stage.ENCODE: Stage.QUEUED, Stage.GENERATE: Stage.ENCODED,
               Stage.ANNOTATE: Stage.QUEUED}  # fmt: skip
COMPLETES_TO = {Stage.ENCODE: Stage.ENCODED, Stage.GENERATE: Stage.DONE,
                Stage.ANNOTATE: Stage.DONE}  # fmt: skip
NEXT_TASK: dict[Stage, Stage | None] = {
    Stage.ENCODE: Stage.GENERATE, Stage.GENERATE: None, Stage.ANNOTATE: None
}  # fmt: skip
FIRST_TASK = Stage.ENCODE


def first_task(task: str) -> Stage:
    """The stage a new (or requeued) job of `task` waits for."""
    return Stage.ANNOTATE if task == ANNOTATION_TASK else Stage.ENCODE


def next_stage_after(waiting: str, task: str) -> Stage:
    """The stage a job waiting in `waiting` goes to next (what the sweeper re-enqueues)."""
    if waiting == Stage.QUEUED:  # two stages wait there: the job's task says which
        return first_task(task)
    return next(stage for stage, before in WAITING_FOR.items() if before == waiting)


class Enqueue(Protocol):
    """(stage, job_id): a message that carries only the id. `front`: ahead of the queue's
    backlog (a stage given back after its worker died has waited its turn already)."""

    def __call__(self, stage: str, job_id: str, front: bool = False) -> None: ...


class _Completes(Protocol):
    def complete_stage(self, job_id: str, stage: str, **values: Any) -> bool: ...


def advance(store: _Completes, enqueue: Enqueue, job_id: str, stage: str, **values: Any) -> bool:
    """Finish `stage` of a job and enqueue the stage after it.

    False when the job was no longer in that stage (cancelled, failed, or finished by a
    duplicate delivery): nothing is enqueued then.
    """
    if not store.complete_stage(job_id, stage, **values):
        return False
    following = NEXT_TASK[Stage(stage)]
    if following is not None:
        enqueue(following, job_id)
    return True
