"""Faults the reliability suite injects, and the clients that live through them.

- `Outage`: a TCP proxy in front of a server (PostgreSQL, the S3 server). `cut(seconds)` drops
  every open connection and refuses new ones for that long: to the platform this is the server
  restarting or the network to it failing. (We do not restart this machine's PostgreSQL itself:
  other tests use it, and it is a system service.)
- Workers and Valkey are real child processes of the stack: they are SIGKILLed and the stack's
  supervisor starts them again, as under `mossctl up`.
- `Client`: what a careful API client does, and what `mossctl` does: an Idempotency-Key per
  job, a retry on 429/503 after Retry-After and on a dropped connection, a long poll per job.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx


class Outage:
    """A loopback TCP proxy to `target` that can be cut for a while."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._stop = threading.Event()
        self._listener = self._listen()
        threading.Thread(target=self._accept, daemon=True, name="outage-accept").start()

    def _listen(self) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(256)
        listener.settimeout(0.2)
        return listener

    def cut(self, seconds: float) -> None:
        """Close every connection now; refuse (RST) new ones for `seconds`."""
        self._down_until = time.monotonic() + seconds
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for a, b in pairs:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    sock.close()

    def close(self) -> None:
        self._stop.set()
        self.cut(0)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self._down_until:
                with contextlib.suppress(OSError):
                    client.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        a, b = pair
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.5)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except (OSError, ValueError):
            return
        finally:
            with self._lock:
                self._pairs.discard(pair)
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.close()


def start_services(settings, queues: tuple[str, ...] = ("encode", "generate")):
    """The stack's Valkey (unless MOSS_REDIS_URL), gateway and one worker per queue: what the
    suite fails, without the MLflow server and the pipeline workers it does not exercise."""
    from services.stack import LocalStack

    stack = LocalStack(settings)
    stack.prepare()
    stack.start_redis()
    stack.choose_default_model()
    stack.start_gateway()
    for queue in queues:
        stack.start_worker(queue)
    return stack


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Outcome:
    """One job as a client saw it."""

    submitted_at: float
    job_id: str | None = None
    refusals: list[int] = field(default_factory=list)  # 429/503 statuses met on the way
    status: str | None = None
    error: str | None = None
    ended_at: float | None = None


class Client:
    """Submit one job and follow it to its end, the way a careful client does."""

    def __init__(self, url: str, key: str, patience_s: float = 300.0) -> None:
        self.http = httpx.Client(
            base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30
        )
        self.patience_s = patience_s

    def close(self) -> None:
        self.http.close()

    def run(self, audio: bytes, **fields: str) -> Outcome:
        outcome = Outcome(submitted_at=time.monotonic())
        deadline = outcome.submitted_at + self.patience_s
        idempotency = {"Idempotency-Key": uuid.uuid4().hex}
        while outcome.job_id is None and time.monotonic() < deadline:
            try:
                response = self.http.post(
                    "/v1/jobs",
                    headers=idempotency,
                    files={"file": ("clip.wav", audio, "audio/wav")},
                    data={"task": "caption", "max_new_tokens": "4", **fields},
                )
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code == 202:
                outcome.job_id = response.json()["id"]
            elif response.status_code in (429, 503):
                assert "retry-after" in response.headers, response.text
                outcome.refusals.append(response.status_code)
                time.sleep(min(5.0, float(response.headers["retry-after"])))
            else:
                outcome.error = f"submit {response.status_code}: {response.text[:200]}"
                return outcome
        while outcome.job_id and outcome.status is None and time.monotonic() < deadline:
            try:
                response = self.http.get(f"/v1/jobs/{outcome.job_id}", params={"wait": 10})
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code in (429, 503):
                time.sleep(min(5.0, float(response.headers.get("retry-after", 1))))
                continue
            job = response.json()
            if response.status_code == 200 and job["status"] in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                outcome.status = job["status"]
                outcome.error = (job.get("error") or {}).get("code")
                outcome.ended_at = time.monotonic()
        return outcome


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]
