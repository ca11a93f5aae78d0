"""A request id on every response (`X-Request-ID`) and every log line of the request, and the
gateway's access log: method, route path (never the query string, which may hold a key),
status, duration and the request id (uvicorn's own access log is off: it logs full URLs).
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.types import ASGIApp, Receive, Scope, Send

from ..core.logs import REQUEST_ID

HEADER = b"x-request-id"
_VALID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")  # a caller's own id is kept if it is sane
access = logging.getLogger("moss.access")


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(HEADER, b"")
        request_id = given.decode() if _VALID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        started, status = time.perf_counter(), {"code": 500}

        async def with_id(message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (HEADER, request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, with_id)
        finally:
            access.info(
                "%s %s %d %.1f ms",
                scope.get("method", ""),
                scope.get("path", ""),
                status["code"],
                1000 * (time.perf_counter() - started),
            )
            REQUEST_ID.reset(token)
