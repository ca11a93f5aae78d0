"""Prometheus metrics of the gateway: HTTP traffic, and the job store's jobs by status.

Served at `GET /metrics` to admin keys only (the Helm chart's ServiceMonitor sends the admin key
as a bearer token). One registry per app, so tests can build many apps in one process.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.jobstore import JobStore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class JobsByStatus:
    """Read at scrape time: one indexed GROUP BY, never stale."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def collect(self):
        family = GaugeMetricFamily(
            "moss_jobs", "Jobs in the job store by status", labels=["status"]
        )
        for status, count in sorted(self.store.count_by_status().items()):
            family.add_metric([status], count)
        yield family


class Metrics:
    def __init__(self, store: JobStore) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "moss_http_requests", "HTTP requests", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.latency = Histogram(
            "moss_http_request_duration_seconds", "HTTP request latency", ["method", "route"],
            registry=self.registry,
        )  # fmt: skip
        self.webhooks = Counter(
            "moss_webhook_deliveries", "Webhook attempts by outcome (delivered, retry, failed)",
            ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.registry.register(JobsByStatus(store))

    def webhook_outcome(self, outcome: str) -> None:
        self.webhooks.labels(outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts requests by route template (`/v1/jobs/{job_id}`, never the id itself)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500}

        async def record_status(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status["code"])).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
