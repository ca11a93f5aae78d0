"""Who may come in, and when: a per-key rate limit (a token bucket in Redis, shared by every
gateway), a per-tenant quota of active jobs, and a queue-depth limit that sheds new jobs with
503 rather than queueing without bound. Refusals carry `Retry-After`.
"""

from __future__ import annotations

import logging

import redis
from redis.exceptions import RedisError

from ..core.errors import ApiError
from ..core.jobstore import JobStore, Principal
from ..core.queue import queue_depth
from ..core.settings import Settings

log = logging.getLogger("moss.gateway")

# KEYS[1]: the bucket; ARGV: capacity, refill per second, now (s). Returns {allowed, wait s}.
_BUCKET = """
local capacity, rate, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or capacity, tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local allowed, wait = 0, (1 - tokens) / rate
if tokens >= 1 then tokens, allowed, wait = tokens - 1, 1, 0 end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(wait)}
"""


class Admission:
    def __init__(self, settings: Settings, store: JobStore) -> None:
        self.settings = settings
        self.store = store
        self.redis = (
            redis.Redis.from_url(settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
            if settings.redis_url
            else None
        )
        self._bucket = self.redis.register_script(_BUCKET) if self.redis else None

    def request(self, who: Principal) -> None:
        """Every authenticated request: the key's rate limit."""
        per_minute = self.settings.rate_limit_per_minute
        if not per_minute or self._bucket is None:
            return
        try:
            now = self.redis.time()
            allowed, wait = self._bucket(
                keys=[f"moss:rate:{who.key_id}"],
                args=[self.settings.rate_burst, per_minute / 60, now[0] + now[1] / 1e6],
            )
        except RedisError as exc:  # Redis away: admit rather than refuse everyone
            log.warning("rate limit unavailable: %s", exc)
            return
        if not int(allowed):
            raise ApiError(
                429,
                "rate_limited",
                f"more than {per_minute} requests a minute with this key; slow down",
                retry_after=float(wait),
            )

    def job(self, who: Principal) -> None:
        """A request that creates a job: the tenant's quota and the queue's depth."""
        quota = self.settings.max_active_jobs_per_tenant
        if self.store.count_active(who.tenant) >= quota:
            raise ApiError(
                429,
                "quota_exceeded",
                f"this tenant already has {quota} jobs queued or running; wait for some to end",
                retry_after=5,
            )
        if self.redis is None:
            return
        try:
            depth = queue_depth(self.redis, "encode")
        except RedisError as exc:  # the job is durable without the broker; the sweeper sends it
            log.warning("queue depth unknown: %s", exc)
            return
        if depth >= self.settings.max_queue_depth:
            raise ApiError(
                503,
                "queue_full",
                f"{depth} jobs are waiting for an encoder; try again shortly",
                retry_after=10,
            )
