"""A server behind the gateway that is away is the client's 503, not our 500.

When the database, the object store or the broker does not answer, the request could not be
served now and may succeed in a moment: 503 with a code naming what is away and Retry-After, so
clients (and `mossctl`) back off and retry instead of reporting a bug. Nothing of the request is
kept: an upload whose job row could not be written is deleted (services.jobs.submit).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DBAPIError, OperationalError
from urllib3.exceptions import HTTPError as Urllib3Error

log = logging.getLogger("moss.gateway")
RETRY_AFTER_S = 2


def _answer(code: str, what: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": f"{what} is not answering; retry shortly"}},
        status_code=503,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def _database(_request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, DBAPIError) and not (
        isinstance(exc, OperationalError) or exc.connection_invalidated
    ):
        raise exc  # a query the database refused: our bug, the generic 500
    log.warning("database unavailable: %s", type(exc.orig if hasattr(exc, "orig") else exc))
    return _answer("database_unavailable", "the job database")


async def _storage(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("object store unavailable: %s", type(exc).__name__)
    return _answer("storage_unavailable", "the object store")


async def _broker(_request: Request, exc: Exception) -> JSONResponse:
    log.warning("broker unavailable: %s", type(exc).__name__)
    return _answer("broker_unavailable", "the queue (Redis)")


def install(app: FastAPI) -> None:
    app.add_exception_handler(DBAPIError, _database)
    app.add_exception_handler(Urllib3Error, _storage)
    app.add_exception_handler(RedisConnectionError, _broker)
    app.add_exception_handler(RedisTimeoutError, _broker)
