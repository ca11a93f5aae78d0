"""The gateway's HTTP server: uvicorn, with a deadline on request headers.

uvicorn times out an idle keep-alive connection, but not one that is sending its headers: a
client that opens a connection and dribbles a header line every few seconds (slowloris) holds
it forever, and enough of them exhaust the process's sockets. Here a connection must deliver a
complete request head within MOSS_HEADER_TIMEOUT_S of its first byte (or of opening), else it
is closed. Bodies have their own idle deadline (gateway.limits).
"""

from __future__ import annotations

import asyncio

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..core.settings import Settings


class HeaderDeadline(H11Protocol):
    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self._arm()  # part of a request head: it has until the deadline to finish
        else:
            self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # keep-alive: uvicorn's own idle timer takes over
        self._disarm()

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.loop.call_later(self.header_timeout_s, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info("closed a connection that sent no complete request head in time")
            self.transport.close()


def serve(app, settings: Settings) -> None:
    protocol = type("Protocol", (HeaderDeadline,), {"header_timeout_s": settings.header_timeout_s})
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        http=protocol,
        log_config=None,  # ours (core.logs): request ids, text or JSON
        access_log=False,  # ours (gateway.requestid): no query strings
        timeout_keep_alive=5,
    )
