"""Job metrics from every worker, kept in Redis so that the gateway's /metrics shows the whole
platform: stage latency histograms, generated tokens, audio seconds processed.

Workers are many processes (and pods); each adds its observations to one Redis hash with
HINCRBYFLOAT, and the gateway turns the hash into Prometheus families at scrape time. The values
are platform-wide, so every gateway replica reports the same: scrape one, or aggregate with
`max` rather than `sum`. Metrics never fail a job: a Redis error is logged and dropped.
"""

from __future__ import annotations

import logging
import math

import redis
from redis.exceptions import RedisError

log = logging.getLogger("moss.metrics")
KEY = "moss:metrics"
# Seconds: a cache hit takes milliseconds, a long transcription on a CPU many minutes.
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0)


class JobMetrics:
    def __init__(self, redis_url: str | None) -> None:
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=2) if redis_url else None

    def stage(
        self, stage: str, seconds: float, audio_seconds: float = 0.0, tokens: int = 0
    ) -> None:
        """A stage that ended its work (the job moved on): its latency, and what it did."""
        if self.redis is None:
            return
        pipe = self.redis.pipeline(transaction=False)
        for bound in (*BUCKETS, math.inf):
            if seconds <= bound:
                pipe.hincrbyfloat(KEY, f"bucket:{stage}:{bound}", 1)
        pipe.hincrbyfloat(KEY, f"sum:{stage}", seconds)
        pipe.hincrbyfloat(KEY, f"count:{stage}", 1)
        if audio_seconds:
            pipe.hincrbyfloat(KEY, f"audio_seconds:{stage}", audio_seconds)
        if tokens:
            pipe.hincrbyfloat(KEY, "generated_tokens", tokens)
        try:
            pipe.execute()
        except RedisError as exc:
            log.warning("job metrics not recorded: %s", exc)

    def read(self) -> dict[str, float]:
        if self.redis is None:
            return {}
        return {k.decode(): float(v) for k, v in self.redis.hgetall(KEY).items()}
