"""The job store's webhook side: signing secrets per API key, and durable deliveries.

A delivery row is written in the same transaction that ends a job (JobStore._update), so an
ended job's webhook is as durable as the job. Senders claim due rows with a guarded update
(a lease), so several gateway replicas never send one attempt twice at once.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..jobstate import Status
from .models import ApiKey, Job, WebhookDelivery, utcnow

SECRET_PREFIX = "whsec_"
EVENTS = {
    Status.SUCCEEDED: "job.succeeded",
    Status.FAILED: "job.failed",
    Status.CANCELLED: "job.cancelled",
}


@dataclass(frozen=True)
class DueDelivery:
    id: str
    job_id: str
    event: str
    attempts: list[dict[str, Any]]
    created_at: datetime
    url: str
    secret: str | None  # None: the key was deleted or lost its secret; the attempt fails


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def add_delivery(session: Session, job_id: str, status: str) -> None:
    """In the transaction that ended the job: one delivery if the job has a webhook_url."""
    if (event := EVENTS.get(Status(status))) is None:
        return
    if session.scalar(select(Job.webhook_url).where(Job.id == job_id)) is None:
        return
    now = utcnow()
    session.add(WebhookDelivery(
        id=str(uuid.uuid4()), job_id=job_id, event=event, status="pending", attempts=[],
        next_attempt_at=now, created_at=now,
    ))  # fmt: skip


class DeliveryStore:
    """Mixed into JobStore (which provides `sessions`)."""

    sessions: Any

    def rotate_webhook_secret(self, key_id: str, tenant: str | None = None) -> str | None:
        """A new signing secret for a key (the old one stops at once); None: no such key."""
        secret = new_secret()
        with self.sessions.begin() as session:
            record = session.get(ApiKey, key_id)
            if record is None or record.revoked_at is not None:
                return None
            if tenant is not None and record.tenant != tenant:
                return None
            record.webhook_secret = secret
        return secret

    def has_webhook_secret(self, key_id: str) -> bool:
        with self.sessions() as session:
            return bool(session.scalar(select(ApiKey.webhook_secret).where(ApiKey.id == key_id)))

    def deliveries(self, job_id: str) -> list[WebhookDelivery]:
        with self.sessions() as session:
            query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
            return list(session.scalars(query.order_by(WebhookDelivery.created_at)).all())

    def claim_deliveries(self, lease_s: float, limit: int = 32) -> list[DueDelivery]:
        """Due deliveries, each leased to the caller for `lease_s` (then due again)."""
        now = utcnow()
        with self.sessions() as session:
            rows = session.execute(
                select(WebhookDelivery, Job.webhook_url, ApiKey.webhook_secret)
                .join(Job, Job.id == WebhookDelivery.job_id)
                .outerjoin(ApiKey, ApiKey.id == Job.key_id)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            ).all()
        claimed = []
        for row, url, secret in rows:
            with self.sessions.begin() as session:
                taken = session.execute(
                    update(WebhookDelivery)
                    .where(
                        WebhookDelivery.id == row.id,
                        WebhookDelivery.status == "pending",
                        WebhookDelivery.next_attempt_at == row.next_attempt_at,
                    )
                    .values(next_attempt_at=now + timedelta(seconds=lease_s))
                ).rowcount
            if taken == 1 and url:
                claimed.append(DueDelivery(
                    row.id, row.job_id, row.event, list(row.attempts or []), row.created_at,
                    url, secret,
                ))  # fmt: skip
        return claimed

    def record_attempt(
        self, delivery_id: str, attempt: dict[str, Any], retry_at: datetime | None, ok: bool
    ) -> None:
        """Append an attempt; `retry_at` None ends the delivery (delivered, or given up)."""
        with self.sessions.begin() as session:
            row = session.get(WebhookDelivery, delivery_id)
            if row is None:
                return
            row.attempts = [*(row.attempts or []), attempt]
            row.status = "delivered" if ok else ("pending" if retry_at else "failed")
            row.next_attempt_at = retry_at if not ok else None
