"""The job store: the source of truth for jobs and API keys (SQLite or PostgreSQL).

Every state change is one short transaction. Transitions are guarded in SQL (`WHERE status IN
...`), so a redelivered or duplicated task cannot move a finished or cancelled job, and two
workers cannot both start the same stage.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, delete, event, func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import sessionmaker

from ..events import NOTICE_FIELDS, JobEvents
from ..jobstate import (
    ACTIVE,
    COMPLETES_TO,
    FINAL,
    WAITING_FOR,
    Stage,
    Status,
    first_task,
    next_stage_after,
)
from .deliveries import DeliveryStore, add_delivery, new_secret
from .models import ApiKey, IdempotencyKey, Job, utcnow

KEY_PREFIX = "moss_"
IDEMPOTENCY_WINDOW = timedelta(hours=24)  # how long an Idempotency-Key names its first job


class IdempotencyConflict(Exception):
    """Another request with the same key made its job first: (digest, job id) of that one."""

    def __init__(self, first: tuple[str, str] | None) -> None:
        super().__init__("the idempotency key was taken by a concurrent request")
        self.first = first


def _aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes (stored in UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the latest revision (idempotent; safe at every start-up)."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    config.attributes["connection"] = engine
    command.upgrade(config, "head")


def hash_key(plain: str) -> str:
    # API keys are 256-bit random strings, so a plain SHA-256 is enough (no brute force).
    return hashlib.sha256(plain.encode()).hexdigest()


def _take_key(session, tenant: str, key: str, digest: str, ref: str, now: datetime) -> None:
    """Record an Idempotency-Key in the caller's transaction; one taken within the window
    makes the commit fail with IntegrityError (an expired one is replaced)."""
    session.execute(
        delete(IdempotencyKey).where(
            IdempotencyKey.tenant == tenant,
            IdempotencyKey.key == key,
            IdempotencyKey.created_at < now - IDEMPOTENCY_WINDOW,
        )
    )
    session.add(
        IdempotencyKey(tenant=tenant, key=key, request_digest=digest, job_id=ref, created_at=now)
    )


@dataclass(frozen=True)
class Principal:
    key_id: str
    tenant: str
    scopes: tuple[str, ...]

    def can(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


class JobStore(DeliveryStore):
    def __init__(self, engine: Engine, events: JobEvents | None = None) -> None:
        self.engine = engine
        self.sessions = sessionmaker(engine, expire_on_commit=False)
        self.events = events

    @classmethod
    def connect(
        cls, url: str, run_migrations: bool = True, events: JobEvents | None = None
    ) -> JobStore:
        """`events.changed(job_id, values)` is called after each committed change of a job's
        status, stage, progress or result (services.core.events: the long poll and the event
        stream)."""
        engine = make_engine(url)
        if run_migrations:
            migrate(engine)
        return cls(engine, events)

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # --- jobs ----------------------------------------------------------------------------

    def create_job(self, idempotency: tuple[str, str] | None = None, **fields: Any) -> Job:
        """Record a new job; with `idempotency` = (key, request digest), also the key, in the
        same transaction, so two racing requests with one key make one job (the loser gets
        IdempotencyConflict)."""
        now = utcnow()
        job = Job(
            id=fields.pop("id", None) or str(uuid.uuid4()),
            status=Status.QUEUED,
            stage=Stage.QUEUED,
            progress=0.0,
            timings={},
            attempts=0,
            cancel_requested=False,
            created_at=now,
            updated_at=now,
            **fields,
        )
        try:
            with self.sessions.begin() as session:
                session.add(job)
                if idempotency is not None:
                    _take_key(session, job.tenant, *idempotency, job.id, now)
        except IntegrityError as exc:
            if idempotency is None:
                raise
            raise IdempotencyConflict(self.idempotent_job(job.tenant, idempotency[0])) from exc
        return job

    def remember_idempotency(self, tenant: str, key: str, digest: str, ref: str) -> None:
        """Record a key for something other than a job (a pipeline run id in `ref`); a key
        taken within the window raises IdempotencyConflict with the first (digest, ref)."""
        try:
            with self.sessions.begin() as session:
                _take_key(session, tenant, key, digest, ref, utcnow())
        except IntegrityError as exc:
            raise IdempotencyConflict(self.idempotent_job(tenant, key)) from exc

    def forget_idempotency(self, tenant: str, key: str) -> None:
        with self.sessions.begin() as session:
            session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.tenant == tenant, IdempotencyKey.key == key
                )
            )

    def idempotent_job(self, tenant: str, key: str) -> tuple[str, str] | None:
        """(request digest, job id) a tenant's key named within the last 24 h, or None."""
        with self.sessions() as session:
            row = session.get(IdempotencyKey, (tenant, key))
            if row is None or _aware(row.created_at) < utcnow() - IDEMPOTENCY_WINDOW:
                return None
            return row.request_digest, row.job_id

    def get_job(self, job_id: str, tenant: str | None = None) -> Job | None:
        with self.sessions() as session:
            job = session.get(Job, job_id)
            if job is None or (tenant is not None and job.tenant != tenant):
                return None
            return job

    def priority_of(self, job_id: str) -> str | None:
        """The job's priority, which picks its queues (services.core.queue.enqueuer)."""
        with self.sessions() as session:
            return session.scalar(select(Job.priority).where(Job.id == job_id))

    def count_active(self, tenant: str) -> int:
        """Jobs of a tenant queued or running (the admission quota)."""
        with self.sessions() as session:
            query = select(func.count()).where(Job.tenant == tenant, Job.status.in_(ACTIVE))
            return int(session.scalar(query) or 0)

    def list_jobs(
        self, tenant: str, status: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Job], int]:
        query = select(Job).where(Job.tenant == tenant)
        if status:
            query = query.where(Job.status == status)
        with self.sessions() as session:
            total = session.scalar(select(func.count()).select_from(query.subquery()))
            rows = session.scalars(
                query.order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
            ).all()
            return list(rows), int(total or 0)

    def count_by_status(self) -> dict[str, int]:
        with self.sessions() as session:
            rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
            return {status: int(count) for status, count in rows}

    def delete_job(self, job_id: str) -> None:
        with self.sessions.begin() as session:
            job = session.get(Job, job_id)
            if job is not None:
                session.delete(job)

    def _update(self, job_id: str, *conditions: Any, **values: Any) -> bool:
        values["updated_at"] = utcnow()
        with self.sessions.begin() as session:
            result = session.execute(
                update(Job).where(Job.id == job_id, *conditions).values(**values)
            )
            changed = result.rowcount == 1
            if changed and values.get("status") in FINAL:
                add_delivery(session, job_id, values["status"])  # as durable as the end
        if changed and self.events is not None and (fields := NOTICE_FIELDS.intersection(values)):
            self.events.changed(job_id, {name: values[name] for name in fields})
        return changed

    def claim_stage(self, job_id: str, stage: str, worker: str | None = None) -> bool:
        """Take `stage` ("encode" or "generate") of a job: True for exactly one caller.

        A redelivered or duplicated task finds the stage already taken (or the job finished or
        cancelled) and must skip its work. `worker` (the Celery node name) is recorded so that
        the stage can be given back as soon as that worker is known to be gone
        (`release_orphans`).
        """
        job = self.get_job(job_id)
        if job is None or (
            WAITING_FOR[Stage(stage)] is Stage.QUEUED and first_task(job.task) != stage
        ):  # an encode message for an annotation job (or the reverse) is not its to take
            return False
        timings = dict(job.timings or {})
        timings[stage] = {"started_at": utcnow().isoformat()}
        return self._update(
            job_id,
            Job.stage == WAITING_FOR[Stage(stage)],
            Job.status.in_(ACTIVE),
            status=Status.RUNNING,
            stage=stage,
            heartbeat_at=utcnow(),
            timings=timings,
            attempts=job.attempts + 1,
            claimed_by=worker,
        )

    def complete_stage(self, job_id: str, stage: str, **values: Any) -> bool:
        """Hand the job to the next stage ("encode" -> "encoded", waiting for a generator)."""
        job = self.get_job(job_id)
        if job is None:
            return False
        timings = dict(job.timings or {})
        entry = dict(timings.get(stage, {}))
        entry["finished_at"] = utcnow().isoformat()
        if "started_at" in entry:
            started = datetime.fromisoformat(entry["started_at"])
            entry["seconds"] = round((utcnow() - started).total_seconds(), 4)
        timings[stage] = entry
        if COMPLETES_TO[Stage(stage)] is Stage.DONE:
            values.update(status=Status.SUCCEEDED, progress=1.0, finished_at=utcnow())
        return self._update(
            job_id,
            Job.stage == stage,
            Job.status == Status.RUNNING,
            stage=COMPLETES_TO[Stage(stage)],
            timings=timings,
            heartbeat_at=utcnow(),
            claimed_by=None,
            **values,
        )

    def release_stage(self, job_id: str, stage: str) -> bool:
        """Give a claimed stage back (its task will be retried)."""
        return self._update(
            job_id,
            Job.stage == stage,
            Job.status == Status.RUNNING,
            stage=WAITING_FOR[Stage(stage)],
            heartbeat_at=None,
            claimed_by=None,
        )

    def reencode(self, job_id: str) -> bool:
        """Send a job from its generate stage back to the encoder (its features are stale)."""
        return self._update(
            job_id,
            Job.stage == Stage.GENERATE,
            Job.status == Status.RUNNING,
            stage=WAITING_FOR[Stage.ENCODE],
            status=Status.QUEUED,
            features_key=None,
            heartbeat_at=None,
            claimed_by=None,
        )

    def heartbeat(self, job_id: str, progress: float | None = None) -> bool:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if progress is not None:
            values["progress"] = max(0.0, min(1.0, progress))
        return self._update(job_id, Job.status == Status.RUNNING, **values)

    def fail(self, job_id: str, code: str, message: str) -> bool:
        return self._update(
            job_id,
            Job.status.in_(ACTIVE),
            status=Status.FAILED,
            error={"code": code, "message": message},
            finished_at=utcnow(),
        )

    def request_cancel(self, job_id: str) -> bool:
        """Cancel a job: queued jobs end at once; running ones stop at their next step."""
        return self._update(
            job_id,
            Job.status.in_(ACTIVE),
            cancel_requested=True,
            status=Status.CANCELLED,
            finished_at=utcnow(),
        )

    def is_cancelled(self, job_id: str) -> bool:
        with self.sessions() as session:
            status = session.scalar(select(Job.status).where(Job.id == job_id))
            return status in (None, Status.CANCELLED)

    def release_stale(self, older_than_s: float) -> list[tuple[str, str]]:
        """Give back the stages of running jobs whose worker stopped reporting (it died).

        Returns (job id, stage to enqueue again). A guarded update, so when several sweepers
        race, each stale stage is released once.
        """
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with self.sessions() as session:
            stale = session.execute(
                select(Job.id, Job.stage).where(
                    Job.status == Status.RUNNING,
                    Job.stage.in_(WAITING_FOR),
                    Job.heartbeat_at < cutoff,
                )
            ).all()
        released = []
        for job_id, stage in stale:
            if self._update(
                job_id,
                Job.stage == stage,
                Job.status == Status.RUNNING,
                Job.heartbeat_at < cutoff,
                stage=WAITING_FOR[Stage(stage)],
                heartbeat_at=None,
                claimed_by=None,
            ):
                released.append((job_id, stage))
        return released

    def release_orphans(
        self,
        worker: str | None = None,
        live: set[str] | None = None,
        older_than_s: float = 0.0,
    ) -> list[tuple[str, str]]:
        """Give back the stages whose worker is known to be gone, without waiting for their
        heartbeat to go stale (`release_stale`, minutes).

        `worker`: a worker that has just started under this name; whatever that name still holds
        was its previous life's (a node name is unique among live workers). `live`: the names
        that answered a ping just now; a named claim outside it, whose heartbeat is also older
        than `older_than_s` (a ping can be missed), is orphaned. Returns (job id, stage to
        enqueue again); guarded like `release_stale`.
        """
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        with self.sessions() as session:
            rows = session.execute(
                select(Job.id, Job.stage, Job.claimed_by, Job.heartbeat_at).where(
                    Job.status == Status.RUNNING,
                    Job.stage.in_(WAITING_FOR),
                    Job.claimed_by.is_not(None),
                )
            ).all()
        released = []
        for job_id, stage, holder, beat in rows:
            mine = worker is not None and holder == worker
            quiet = beat is None or _aware(beat) < cutoff
            gone = live is not None and holder not in live and quiet
            if (mine or gone) and self._update(
                job_id,
                Job.stage == stage,
                Job.status == Status.RUNNING,
                Job.claimed_by == holder,
                stage=WAITING_FOR[Stage(stage)],
                heartbeat_at=None,
                claimed_by=None,
            ):
                released.append((job_id, stage))
        return released

    def record_timing(self, job_id: str, stage: str, **extra: Any) -> None:
        """Add details (e.g. cache_hit) to a stage's timing entry."""
        job = self.get_job(job_id)
        if job is not None:
            timings = dict(job.timings or {})
            timings[stage] = {**timings.get(stage, {}), **extra}
            self._update(job_id, timings=timings)

    def set_params(self, job_id: str, params: dict[str, Any]) -> bool:
        return self._update(job_id, params=params)

    def touch(self, job_id: str) -> bool:
        return self._update(job_id, Job.status.in_(ACTIVE))

    def waiting(self, older_than_s: float) -> list[tuple[str, str]]:
        """Jobs waiting for a stage for longer than `older_than_s`: (job id, stage)."""
        cutoff = utcnow() - timedelta(seconds=older_than_s)
        waits = set(WAITING_FOR.values())
        with self.sessions() as session:
            rows = session.execute(
                select(Job.id, Job.stage, Job.task).where(
                    Job.status.in_(ACTIVE), Job.stage.in_(waits), Job.updated_at < cutoff
                )
            ).all()
        return [(job_id, str(next_stage_after(stage, task))) for job_id, stage, task in rows]

    def purge(self, job_id: str) -> bool:
        """Forget what a job held (prompt, result, error message); the row stays as a record
        that the job existed and was purged. The caller deletes the objects first."""
        job = self.get_job(job_id)
        if job is None:
            return False
        error = {"code": job.error["code"], "message": "purged"} if job.error else None
        return self._update(
            job_id,
            Job.status.in_(FINAL),
            prompt=None,
            result=None,
            error=error,
            purged_at=utcnow(),
        )

    def expired(self, older_than: timedelta, limit: int = 100) -> list[str]:
        """Ended, not yet purged jobs that finished before now - `older_than` (retention)."""
        cutoff = utcnow() - older_than
        with self.sessions() as session:
            return list(session.scalars(
                select(Job.id)
                .where(Job.status.in_(FINAL), Job.purged_at.is_(None), Job.finished_at < cutoff)
                .order_by(Job.finished_at)
                .limit(limit)
            ).all())  # fmt: skip

    def features_in_use(self, features_key: str, besides: str) -> bool:
        """Whether an active job other than `besides` still needs these features."""
        with self.sessions() as session:
            query = select(func.count()).where(
                Job.features_key == features_key, Job.id != besides, Job.status.in_(ACTIVE)
            )
            return bool(session.scalar(query))

    # --- API keys ------------------------------------------------------------------------

    def create_key(
        self, tenant: str, scopes: list[str], name: str = "", plain: str | None = None
    ) -> tuple[str, ApiKey]:
        """Returns the plain key (shown once, never stored) and its record."""
        plain = plain or KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id=str(uuid.uuid4()),
            tenant=tenant,
            name=name or tenant,
            prefix=plain[:12],
            key_hash=hash_key(plain),
            scopes=list(scopes),
            created_at=utcnow(),
            webhook_secret=new_secret(),
        )
        with self.sessions.begin() as session:
            existing = session.scalar(select(ApiKey).where(ApiKey.key_hash == record.key_hash))
            if existing is not None:
                return plain, existing
            session.add(record)
        return plain, record

    def restore_key(self, tenant: str, scopes: list[str], name: str, plain: str) -> ApiKey:
        """The operator's bootstrap key as configured, whatever happened to it through the API.

        An admin can revoke the key that MOSS_API_KEY (or MOSS_HOME/admin.key) names, or it can
        be created with other scopes by an older release; either way the operator would be locked
        out until someone edits the database. On every start it is made live again with at least
        `scopes`. Rotation is therefore a configuration change: set a new key, restart, then
        revoke the old one (which, no longer configured, stays revoked)."""
        _, record = self.create_key(tenant, scopes, name, plain=plain)
        with self.sessions.begin() as session:
            record = session.get(ApiKey, record.id)
            record.revoked_at = None
            record.scopes = sorted(set(record.scopes) | set(scopes))
        return record

    def authenticate(self, plain: str) -> Principal | None:
        with self.sessions() as session:
            record = session.scalar(
                select(ApiKey).where(
                    ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None)
                )
            )
            if record is None:
                return None
            return Principal(record.id, record.tenant, tuple(record.scopes))

    def revoke_key(self, key_id: str, tenant: str | None = None) -> bool:
        with self.sessions.begin() as session:
            record = session.get(ApiKey, key_id)
            if record is None or (tenant is not None and record.tenant != tenant):
                return False
            record.revoked_at = record.revoked_at or datetime.now(UTC)
            return True

    def list_keys(self, tenant: str | None = None) -> list[ApiKey]:
        query = select(ApiKey).order_by(ApiKey.created_at)
        if tenant is not None:
            query = query.where(ApiKey.tenant == tenant)
        with self.sessions() as session:
            return list(session.scalars(query).all())
