"""Webhook deliveries: the gateway POSTs each ended job to its webhook_url, signed.

The job store holds a delivery row from the moment a job ends (services.core.jobstore
.deliveries). A gateway thread claims due rows, sends them and records every attempt on the
row, so a restart loses nothing and `GET /v1/jobs/{id}` shows each attempt. A 2xx answer ends
the delivery; anything else is retried after webhook_backoff_s, doubling, at most an hour
apart, until webhook_retry_hours after the job ended.

The signature (docs/api.md, "Verifying a webhook"):
    Moss-Webhook-Signature: v1=hex(HMAC-SHA256(secret, f"{Moss-Webhook-Timestamp}.{body}"))
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx

from ..core.egress import EgressRefused, check_webhook_url
from ..core.jobstore import DueDelivery
from ..jobs.context import Context
from . import outbound
from .schemas import JobOut

log = logging.getLogger("moss.webhooks")
LEASE_S = 120.0  # a claimed delivery is due again if its sender died mid-attempt
MAX_DELAY_S = 3600.0


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"v1={mac.hexdigest()}"


def payload(delivery: DueDelivery, job) -> bytes:
    body = {
        "id": delivery.id,
        "type": delivery.event,
        "created_at": _utc(delivery.created_at).isoformat(),
        "data": {"job": JobOut.of(job).model_dump(mode="json")},
    }
    return json.dumps(body, separators=(",", ":")).encode()


def retry_at(ctx: Context, delivery: DueDelivery, now: datetime) -> datetime | None:
    """When to try again after a failed attempt, or None past the retry horizon."""
    tries = len(delivery.attempts) + 1
    delay = min(ctx.settings.webhook_backoff_s * 2 ** (tries - 1), MAX_DELAY_S)
    horizon = _utc(delivery.created_at) + timedelta(hours=ctx.settings.webhook_retry_hours)
    moment = now + timedelta(seconds=delay)
    return moment if moment <= horizon else None


def attempt(ctx: Context, http: httpx.Client, delivery: DueDelivery) -> tuple[bool, dict]:
    """One try: (delivered, the attempt's record)."""
    started = time.monotonic()
    status_code, error = None, None
    job = ctx.store.get_job(delivery.job_id)
    try:
        if job is None or delivery.secret is None:
            raise EgressRefused("no_secret", "the job or its API key's signing secret is gone")
        pinned = check_webhook_url(delivery.url, ctx.settings)  # resolved again
        body = payload(delivery, job)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "Moss-Webhook-Id": delivery.id,
            "Moss-Webhook-Timestamp": str(timestamp),
            "Moss-Webhook-Signature": sign(delivery.secret, timestamp, body),
            "Moss-Event": delivery.event,
        }
        response = outbound.post(http, pinned, body, headers)
        status_code = response.status_code
        if not 200 <= status_code < 300:
            error = f"HTTP {status_code}"
    except EgressRefused as exc:
        error = exc.message
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:300]
    record = {
        "at": datetime.now(UTC).isoformat(),
        "status_code": status_code,
        "error": error,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }
    return error is None, record


def deliver_due(ctx: Context, http: httpx.Client, on_outcome=None) -> int:
    """Send what is due; the number of attempts made."""
    due = ctx.store.claim_deliveries(lease_s=LEASE_S)
    for delivery in due:
        ok, record = attempt(ctx, http, delivery)
        later = None if ok else retry_at(ctx, delivery, datetime.now(UTC))
        ctx.store.record_attempt(delivery.id, record, later, ok)
        outcome = "delivered" if ok else ("retry" if later else "failed")
        if not ok:
            log.warning("webhook %s of job %s: %s (%s)", delivery.event, delivery.job_id,
                        record["error"], outcome)  # fmt: skip
        if on_outcome is not None:
            on_outcome(outcome)
    return len(due)


def run_webhooks(ctx: Context, stop: threading.Event, on_outcome=None, every_s=0.5) -> None:
    """The gateway's sender thread: poll for due deliveries until `stop` is set."""
    with outbound.client(ctx.settings.webhook_timeout_s) as http:
        while not stop.wait(every_s):
            try:
                while deliver_due(ctx, http, on_outcome):
                    pass
            except Exception:
                log.exception("webhook delivery failed")


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
