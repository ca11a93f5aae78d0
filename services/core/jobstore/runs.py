"""The run store: pipeline runs in the job store's database (table `pipeline_runs`).

The gateway creates a run's row before it queues the message (`lifecycle.start_pipeline`), so
an accepted run is durable; the pipeline worker moves it along (start, progress, finish) and the
gateway reads it. Every move is one short transaction guarded in SQL by core.runstate's MOVES,
so a message delivered twice starts nothing twice and nothing moves a finished run. After each
committed change the run's events go out on Redis (core.events, under `event_key(run_id)`), for
`GET /v1/pipelines/runs/{id}/events`.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select, update

from ..events import JobEvents
from ..jobstate import Status
from ..runstate import ACTIVE, FINAL, merge_progress, sources
from .models import PipelineRun, utcnow

# The fields whose change is published as an event (the rest are the worker's bookkeeping).
EVENT_FIELDS = frozenset(
    {"status", "progress", "mlflow_run_id", "model", "version", "decision", "error",
     "kubeflow_run_id", "cancel_requested"}
)  # fmt: skip
LOG_PREFIX = "pipeline-logs"


def event_key(run_id: str) -> str:
    """Where a run's events go (a job's go under its id; a run's must not share that space)."""
    return f"pipeline-run-{run_id}"


def log_key(tenant: str, run_id: str) -> str:
    """The object-store folder of a run's log: numbered chunks, appended as the run goes."""
    return f"{LOG_PREFIX}/{tenant}/{run_id}/"


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class RunStore:
    def __init__(self, engine: Engine, events: JobEvents | None = None) -> None:
        from sqlalchemy.orm import sessionmaker

        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.events = events

    @classmethod
    def of(cls, store: Any) -> RunStore:
        """The run store beside a JobStore (same database, same events)."""
        return cls(store.engine, store.events)

    def create(
        self,
        tenant: str,
        name: str,
        params: dict[str, Any],
        mode: str,
        key_id: str | None = None,
        run_id: str | None = None,
    ) -> PipelineRun:
        now = utcnow()
        run_id = run_id or new_run_id()
        run = PipelineRun(
            id=run_id, tenant=tenant, name=name, params=dict(params), mode=mode,
            status=Status.QUEUED, progress={}, log_key=log_key(tenant, run_id),
            cancel_requested=False, key_id=key_id, created_at=now, updated_at=now,
        )  # fmt: skip
        with self.sessions.begin() as session:
            session.add(run)
        return run

    def get(self, run_id: str, tenant: str | None = None) -> PipelineRun | None:
        """The run; None when there is none, or it is another tenant's (`tenant` given)."""
        with self.sessions() as session:
            run = session.get(PipelineRun, run_id)
            if run is None or (tenant is not None and run.tenant != tenant):
                return None
            return run

    def list(
        self,
        tenant: str | None,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[PipelineRun], int]:
        """Runs newest first; `tenant` None: every tenant's (the admin's view)."""
        query = select(PipelineRun)
        if tenant is not None:
            query = query.where(PipelineRun.tenant == tenant)
        if status:
            query = query.where(PipelineRun.status == status)
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(
                query.order_by(PipelineRun.created_at.desc(), PipelineRun.id)
                .limit(limit)
                .offset(offset)
            ).all()
            return list(rows), int(total or 0)

    def ended_since(self, name: str, since: datetime) -> list[PipelineRun]:
        """The runs of pipeline `name` that ended at or after `since` (the sweeper's look at
        what finished runs left behind)."""
        query = select(PipelineRun).where(
            PipelineRun.name == name,
            PipelineRun.status.in_(FINAL),
            PipelineRun.finished_at >= since,
        )
        with self.sessions() as session:
            return list(session.scalars(query.order_by(PipelineRun.finished_at)).all())

    def _update(self, run_id: str, *conditions: Any, **values: Any) -> bool:
        values["updated_at"] = utcnow()
        with self.sessions.begin() as session:
            result = session.execute(
                update(PipelineRun).where(PipelineRun.id == run_id, *conditions).values(**values)
            )
            changed = result.rowcount == 1
        if changed:
            self._publish(run_id, values)
        return changed

    def _publish(self, run_id: str, values: dict[str, Any]) -> None:
        if self.events is not None and (fields := EVENT_FIELDS.intersection(values)):
            self.events.changed(event_key(run_id), {name: values[name] for name in fields})

    def _move(self, run_id: str, target: Status, *conditions: Any, **values: Any) -> bool:
        return self._update(
            run_id, PipelineRun.status.in_(sources(target)), *conditions, status=target, **values
        )

    def start(self, run_id: str, worker: str | None = None) -> bool:
        """The pipeline worker takes a queued run: True for exactly one caller (a cancelled
        run, or one a duplicate message already started, is skipped)."""
        now = utcnow()
        return self._move(run_id, Status.RUNNING, PipelineRun.status == Status.QUEUED,
                          started_at=now, claimed_by=worker)  # fmt: skip

    def set_fields(self, run_id: str, **values: Any) -> bool:
        """Bookkeeping of a running run (its Kubeflow run id, ...)."""
        return self._update(run_id, PipelineRun.status.in_(ACTIVE), **values)

    def add_progress(self, run_id: str, fields: dict[str, Any]) -> bool:
        """Merge one or more progress objects (in order) into an active run's record."""
        with self.sessions.begin() as session:
            run = session.get(PipelineRun, run_id, with_for_update=True)
            if run is None or run.status not in ACTIVE:
                return False
            progress, columns = merge_progress(run.progress or {}, fields)
            values = {"progress": progress, **columns, "updated_at": utcnow()}
            for name, value in values.items():
                setattr(run, name, value)
        self._publish(run_id, values)
        return True

    def finish(self, run_id: str, status: Status, error: dict[str, str] | None = None) -> bool:
        """End a running (or still queued) run: succeeded, failed or cancelled."""
        if status not in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
            raise ValueError(f"{status} is not an end")
        return self._move(run_id, status, error=error, finished_at=utcnow(), claimed_by=None)

    def request_cancel(self, run_id: str) -> bool:
        """Cancel a run: a queued one ends at once (the worker skips its message), a running
        one is marked for its worker, which stops it and records `cancelled`. False when the
        run has already ended."""
        if self._move(run_id, Status.CANCELLED, PipelineRun.status == Status.QUEUED,
                      cancel_requested=True, finished_at=utcnow()):  # fmt: skip
            return True
        return self._update(run_id, PipelineRun.status == Status.RUNNING, cancel_requested=True)

    def cancel_requested(self, run_id: str) -> bool:
        with self.sessions() as session:
            wanted = session.scalar(
                select(PipelineRun.cancel_requested).where(PipelineRun.id == run_id)
            )
            return bool(wanted)

    def touch(self, run_id: str) -> bool:
        """The worker still follows this run (the sweeper fails a run nobody follows)."""
        return self._update(run_id, PipelineRun.status == Status.RUNNING)

    def lost_queued(self, older_than_s: float) -> list[PipelineRun]:
        """Queued runs nothing has moved for `older_than_s` (created, or last sent, before
        then): the sweeper sends them again when the `pipelines` queue is empty."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        query = select(PipelineRun).where(
            PipelineRun.status == Status.QUEUED, PipelineRun.updated_at < cutoff
        )
        with self.sessions() as session:
            return list(session.scalars(query.order_by(PipelineRun.created_at)).all())

    def resent(self, run_id: str) -> bool:
        """A queued run's message was sent again now (its wait starts over)."""
        return self._update(run_id, PipelineRun.status == Status.QUEUED)

    def fail_orphans(
        self, worker: str | None = None, live: set[str] | None = None, quiet_s: float = 0.0
    ) -> list[str]:
        """Fail the running runs whose pipeline worker is gone (a run is never started twice:
        training is not idempotent). `worker`: a worker that has just started under this name;
        what the name still holds was its previous process's. `live`: the workers that answered
        a ping just now; a run held by another, not touched for `quiet_s`, lost its worker (a
        live one touches its runs every few seconds, so a missed ping fails nothing). Returns
        their ids."""
        if worker is None and live is None:
            return []
        cutoff = utcnow() - timedelta(seconds=quiet_s)
        query = select(PipelineRun.id, PipelineRun.claimed_by).where(
            PipelineRun.status == Status.RUNNING, PipelineRun.claimed_by.is_not(None)
        )
        if worker is not None:
            query = query.where(PipelineRun.claimed_by == worker)
        else:
            query = query.where(PipelineRun.updated_at < cutoff)
        with self.sessions() as session:
            held = session.execute(query).all()
        error = {"code": "worker_lost", "message": "the pipeline worker running it stopped "
                 "before the run ended; start the run again"}  # fmt: skip
        lost = [(run_id, holder) for run_id, holder in held if worker or holder not in live]
        return [
            run_id
            for run_id, holder in lost
            if self._move(
                run_id,
                Status.FAILED,
                PipelineRun.claimed_by == holder,
                *(() if worker else (PipelineRun.updated_at < cutoff,)),
                error=error,
                finished_at=utcnow(),
                claimed_by=None,
            )
        ]


def log_chunk_key(folder: str, number: int) -> str:
    """The key of a run's `number`th log chunk (0, 1, ...: the worker writes them in order)."""
    return f"{folder}{number:06d}.log"
