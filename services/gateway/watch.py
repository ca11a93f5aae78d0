"""Waiting for a job to change, for the long poll (on Redis pub/sub notices when the gateway
has Redis, services.core.events; by reading the store every LONG_POLL_STEP_S when it has not),
and reading a job's event stream, for `GET /v1/jobs/{id}/events`.

A waiter subscribes before it reads the job, so a change between the read and the wait is never
missed; it also reads the store every FALLBACK_S whatever it hears, so a lost notice costs at
most that much latency.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.exceptions import RedisError

from ..core.events import channel, fields_of, stream

log = logging.getLogger("moss.gateway")
LONG_POLL_STEP_S = 0.02  # without Redis: a primary-key read every 20 ms
FALLBACK_S = 1.0  # with Redis: a read at least this often (a notice may be lost)

Changed = Callable[[float], Awaitable[None]]  # wait up to so many seconds for a change


async def _sleep_step(timeout: float) -> None:
    await asyncio.sleep(min(timeout, LONG_POLL_STEP_S))


class JobWatch:
    def __init__(self, redis_url: str | None) -> None:
        self.client = Redis.from_url(redis_url) if redis_url else None

    @asynccontextmanager
    async def watch(
        self, job_id: str, fields: frozenset[str] = frozenset({"status"})
    ) -> AsyncIterator[Changed]:
        """`async with watch(id) as changed: ... await changed(seconds)` returns on a notice of
        a change to one of `fields`, after FALLBACK_S, or after `seconds`, whichever comes
        first (progress notices do not wake a long poll)."""
        if self.client is None:
            yield _sleep_step
            return
        pubsub = self.client.pubsub()
        try:
            await pubsub.subscribe(channel(job_id))
            await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        except (RedisError, OSError) as exc:
            log.debug("long poll of %s without notices: %s", job_id, exc)
            await pubsub.aclose()
            yield _sleep_step
            return

        async def changed(timeout: float) -> None:
            deadline = time.monotonic() + min(timeout, FALLBACK_S)
            try:
                while (left := deadline - time.monotonic()) > 0:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                    if message and fields & fields_of(message["data"]):
                        return
            except (RedisError, OSError):
                await _sleep_step(timeout)

        try:
            yield changed
        finally:
            await pubsub.aclose()

    async def backlog(self, job_id: str, after: str) -> list[tuple[str, str, str]]:
        """The job's events after entry `after` ("0": all kept), without waiting."""
        return await self._read(job_id, after, block_ms=None)

    async def next_events(self, job_id: str, after: str) -> list[tuple[str, str, str]]:
        """Events after `after`, waiting up to FALLBACK_S for the first one ([] on timeout)."""
        return await self._read(job_id, after, block_ms=int(FALLBACK_S * 1000))

    async def _read(self, job_id: str, after: str, block_ms: int | None):
        if self.client is None:
            if block_ms:
                await asyncio.sleep(block_ms / 1000)
            return []
        try:
            got = await self.client.xread({stream(job_id): after}, count=200, block=block_ms)
        except (RedisError, OSError) as exc:
            log.debug("events of %s unavailable: %s", job_id, exc)
            if block_ms:
                await asyncio.sleep(block_ms / 1000)
            return []
        return [
            (entry.decode(), fields[b"type"].decode(), fields[b"data"].decode())
            for _, entries in got or []
            for entry, fields in entries
        ]

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
