"""Cap request bodies while they stream in, before anything is parsed or stored.

A declared Content-Length over the cap is refused at once; a chunked body is counted and cut
off as soon as it passes the cap. Either way the client gets 413 with a JSON error and the
upload never reaches the object store. A body that stops arriving (a lying Content-Length, a
stalled client) is cut off after MOSS_BODY_IDLE_TIMEOUT_S without a byte: 408, and its
connection is closed, instead of holding a worker slot for as long as the client likes.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class _TooLarge(Exception):
    pass


class _TooSlow(Exception):
    pass


class BodySizeLimit:
    """`max_bytes` for every body; `paths` gives some exact paths a cap of their own (the
    checkpoint import takes archives of gigabytes, MOSS_IMPORT_MAX_BYTES)."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        idle_timeout_s: float = 30.0,
        paths: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.paths = paths or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        cap = self.paths.get(scope.get("path", ""), self.max_bytes)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cap:
            await self._refuse(send, 413, cap)
            return
        seen = 0
        failed: int | None = None  # 413 or 408: whatever the app answers becomes that
        refused = False

        async def counted() -> Message:
            nonlocal seen, failed
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout_s)
            except TimeoutError:
                failed = 408
                raise _TooSlow from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:
                    failed = 413
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal refused
            if failed is not None:  # a form parser may turn our exception into its own 400
                if not refused:
                    refused = True
                    await self._refuse(send, failed, cap)
                return
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except (_TooLarge, _TooSlow):
            if not refused:
                await self._refuse(send, failed or 413, cap)

    async def _refuse(self, send: Send, status: int, cap: int) -> None:
        if status == 408:
            error = {
                "code": "body_timeout",
                "message": f"no request body arrived for {self.idle_timeout_s:g} s",
            }
        else:
            mb = cap / (1024 * 1024)
            error = {"code": "upload_too_large", "message": f"the request exceeds {mb:.0f} MB"}
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": json.dumps({"error": error}).encode()})
