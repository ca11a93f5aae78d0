"""Prometheus metrics: the gateway's HTTP traffic and webhook outcomes; the job store's jobs by
status; the queues' depths; and what the workers report through Redis (services.core
.jobmetrics): stage latency histograms, generated tokens and audio seconds (rates in PromQL,
e.g. tokens/s = `rate(moss_generated_tokens_total[1m])`).

Served at `GET /metrics` to admin keys only (the Helm chart's ServiceMonitor sends the admin key
as a bearer token). One registry per app, so tests can build many apps in one process.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.jobmetrics import BUCKETS, JobMetrics
from ..core.jobstore import JobStore
from ..core.queue import HIGH, PIPELINE_QUEUE, QUEUES

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


class FromRedis:
    """Queue depths and the workers' job metrics, read at scrape time (nothing without Redis)."""

    def __init__(self, redis_url: str | None) -> None:
        self.jobs = JobMetrics(redis_url)

    def collect(self):
        if self.jobs.redis is None:
            return
        try:
            names = [q for queue in QUEUES for q in (queue, f"{queue}{HIGH}")] + [PIPELINE_QUEUE]
            pipe = self.jobs.redis.pipeline(transaction=False)
            for name in names:
                pipe.llen(name)
            depths = pipe.execute()
            values = self.jobs.read()
        except RedisError:
            return  # /readyz reports Redis; a scrape still shows the rest
        depth = GaugeMetricFamily(
            "moss_queue_depth", "Messages waiting per queue", labels=["queue"]
        )
        for name, count in zip(names, depths, strict=True):
            depth.add_metric([name], count)
        yield depth
        latency = HistogramMetricFamily(
            "moss_stage_duration_seconds", "Worker time per job stage", labels=["stage"]
        )
        audio = CounterMetricFamily(
            "moss_audio_seconds", "Audio seconds through each stage", labels=["stage"]
        )
        for stage in QUEUES:
            count = values.get(f"count:{stage}", 0.0)
            buckets = [
                (str(bound), values.get(f"bucket:{stage}:{bound}", 0.0)) for bound in BUCKETS
            ]
            latency.add_metric(
                [stage], [*buckets, ("+Inf", count)], sum_value=values.get(f"sum:{stage}", 0.0)
            )
            audio.add_metric([stage], values.get(f"audio_seconds:{stage}", 0.0))
        yield latency
        yield audio
        tokens = CounterMetricFamily("moss_generated_tokens", "Tokens the generators produced")
        tokens.add_metric([], values.get("generated_tokens", 0.0))
        yield tokens


class Metrics:
    def __init__(self, store: JobStore, redis_url: str | None = None) -> None:
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
        self.registry.register(FromRedis(redis_url))

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
