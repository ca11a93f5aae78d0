"""Outlast a short outage of the database or the object store instead of failing the job.

A worker that meets a refused connection halfway through a stage used to give the stage back and
retry the whole task: the encoder or the decoder ran again for a write that only needed to be
repeated, or, when giving back failed too (the database was the one away), the stage stayed
claimed until the sweeper's heartbeat timeout. `Patient` wraps the job store or the storage of a
worker: every call that fails because its server is away is tried again, with backoff, for up to
MOSS_DEPENDENCY_RETRY_S; then the error goes up as before. The gateway does not wait: it answers
503 with Retry-After (gateway.unavailable).

Every call retried is safe to repeat: store writes are guarded updates (repeated after a commit
whose answer was lost, the guard refuses and the caller sees the change already made), and
objects are written whole under content-addressed keys. A call given a stream is not retried (a
stream read once cannot be read again).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

log = logging.getLogger("moss.jobs")


def unavailable(exc: BaseException) -> bool:
    """A server that did not answer (refused, reset, timed out), not a request it refused."""
    from sqlalchemy.exc import DBAPIError, OperationalError
    from urllib3.exceptions import HTTPError as Urllib3Error

    if isinstance(exc, OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, Urllib3Error | ConnectionError | TimeoutError):
        return True
    code = getattr(exc, "code", None)  # minio's S3Error
    return type(exc).__name__ == "S3Error" and code in ("ServiceUnavailable", "SlowDown")


def patiently(call: Callable[[], Any], budget_s: float, name: str = "call") -> Any:
    """`call()`, tried again while `unavailable` says its server is away, for `budget_s`."""
    for attempt in Retrying(
        retry=retry_if_exception(unavailable),
        stop=stop_after_delay(budget_s),
        wait=wait_exponential(multiplier=0.2, max=5.0),
        before_sleep=functools.partial(_say, name),
        reraise=True,
    ):
        with attempt:
            return call()
    raise AssertionError("unreachable")


class Patient:
    """`target`'s methods, each retried while `unavailable` says its server is away."""

    def __init__(self, target: Any, budget_s: float) -> None:
        self._target = target
        self._budget_s = budget_s

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute) or name in ("put_file",):
            return attribute

        @functools.wraps(attribute)
        def call(*args: Any, **kwargs: Any) -> Any:
            return patiently(lambda: attribute(*args, **kwargs), self._budget_s, name)

        return call


def _say(name: str, state) -> None:
    error = state.outcome.exception()
    log.warning("%s: server away (%s: %s), trying again", name, type(error).__name__, error)
