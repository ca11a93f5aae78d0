"""Slow and greedy clients against the real gateway process (uvicorn on loopback).

A request head that never completes is cut off (header deadline), a body that stops arriving
gets 408, and past its in-flight budget the gateway answers 503 `overloaded` with Retry-After
at once, while probes still answer.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from services.core.settings import Settings
from services.stack import LocalStack, free_port
from tests.integration.conftest import redis_db

pytestmark = [pytest.mark.integration, pytest.mark.reliability]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, redis_url):
    settings = Settings(
        home=tmp_path_factory.mktemp("gateway-home"),
        port=free_port(),
        redis_url=redis_db(redis_url, 9),
        header_timeout_s=1.0,
        body_idle_timeout_s=1.0,
        gateway_max_inflight=2,
        gateway_queue_wait_s=0.2,
    )
    stack = LocalStack(settings)
    stack.prepare()
    stack.start_redis()
    stack.start_gateway()
    try:
        yield stack
    finally:
        stack.stop()


def raw(stack) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", stack.settings.port), timeout=10)
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_request_head_that_never_ends_is_cut_off(gateway) -> None:
    sock = raw(gateway)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed = False
    for _ in range(20):  # a header line every 0.3 s: slowloris
        try:
            sock.sendall(b"X-Slow: 1\r\n")
            time.sleep(0.3)
            sock.settimeout(0.01)
            if sock.recv(1) == b"":
                closed = True
                break
        except TimeoutError:
            continue
        except OSError:
            closed = True
            break
    assert closed, "the connection stayed open for 6 s without a complete request head"
    assert time.monotonic() - started < 4
    sock.close()
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_a_connection_that_sends_nothing_is_closed(gateway) -> None:
    sock = raw(gateway)
    started = time.monotonic()
    assert read_all(sock) == b""
    assert time.monotonic() - started < 4
    sock.close()


def test_a_body_that_stops_arriving_gets_408(gateway) -> None:
    sock = raw(gateway)
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {gateway.api_key}\r\n"
        "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
    )
    started = time.monotonic()
    sock.sendall(head.encode() + b"--b\r\n")  # then nothing: a lying Content-Length
    answer = read_all(sock)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"body_timeout"' in answer
    assert time.monotonic() - started < 5
    sock.close()


def test_past_its_budget_the_gateway_sheds_with_retry_after(gateway) -> None:
    """Two slow uploads hold both slots; a third request is refused at once, probes are not."""
    stop = threading.Event()

    def slow_upload() -> None:
        sock = raw(gateway)
        sock.sendall(
            (
                "POST /v1/jobs HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {gateway.api_key}\r\n"
                "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
                '--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n"
            ).encode()
        )
        while not stop.is_set():
            sock.sendall(b"x" * 16)  # within the idle deadline: it keeps its slot
            time.sleep(0.3)
        sock.close()

    holders = [threading.Thread(target=slow_upload) for _ in range(2)]
    for thread in holders:
        thread.start()
    time.sleep(0.5)
    try:
        headers = {"Authorization": f"Bearer {gateway.api_key}"}
        started = time.monotonic()
        refused = httpx.get(f"{gateway.url}/v1/jobs", headers=headers)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "overloaded"
        assert refused.headers["retry-after"] == "1"
        assert time.monotonic() - started < 2
        assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    finally:
        stop.set()
        for thread in holders:
            thread.join()
    time.sleep(0.3)
    assert httpx.get(f"{gateway.url}/v1/jobs", headers=headers).status_code == 200
