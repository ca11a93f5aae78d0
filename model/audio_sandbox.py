"""Decoding in a child process with limits, so that hostile audio costs a child, never the
gateway or a worker.

FFmpeg's demuxers and decoders are native code: a crash there (PyAV 18 segfaults on planar
frames of 8+ channels; other bugs will come) kills the whole Python process, and a
decompression bomb can take gigabytes before any Python check runs. So every call runs
`load_audio` or `probe_audio` in a fresh process that caps its own address space, CPU seconds
and core files before it reads a byte of the upload, and the parent adds a wall-clock timeout.
A child that dies becomes `AudioDecodeError("decoder_crashed")`; one that hits a limit becomes
`decode_limit_exceeded` or `decode_timeout`.

The fresh processes are forked from a zygote: `python -m model.audio_sandbox`, started once per
parent process with an empty environment (no secrets) and one thread, which imports PyAV and
numpy and then only forks. A fork costs a few milliseconds where a new interpreter costs ~0.3 s
of CPU, and a job used to start two (the gateway's probe, the worker's decode), which on a
small machine took CPU from the encoder. Each child still serves one request and exits, and the
zygote never touches an upload: nothing of one upload survives into the next.

Protocol. Parent and zygote share a SOCK_SEQPACKET socket: the parent sends `R id` with one end
of a fresh socket pair attached (SCM_RIGHTS) and may send `K id` (kill: the wall-clock limit
passed); the zygote answers `E id status` when that child has exited. Over the pair the child
reads one JSON header line and the raw upload, and writes one JSON header line and the raw
result (float32 samples for a load).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from .audio import AudioDecodeError, AudioInfo, load_audio, probe_audio
from .audio_formats import SAMPLE_RATE


@dataclass(frozen=True)
class DecodeLimits:
    memory_mb: int = 2048  # address space the child may add to what it starts with
    timeout_s: float = 120.0  # wall clock; CPU time is capped at the same number of seconds


CHILD_COMMAND = (sys.executable, "-m", "model.audio_sandbox")
# The zygote needs to find the interpreter's packages and nothing else of ours.
_ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")
_REQUEST = struct.Struct("<cQ")  # b"R" (a socket attached) or b"K", request id
_EXITED = struct.Struct("<Qq")  # request id, exit code (negative: the signal that ended it)

# A handler turns (request, upload, limits) into (header, body) inside the child.
Handler = Callable[[dict, bytes, DecodeLimits], tuple[dict, bytes]]


# --- parent ----------------------------------------------------------------------------------


def load_audio_isolated(
    data: bytes, *, max_seconds: float | None = None, limits: DecodeLimits | None = None
) -> np.ndarray:
    """`load_audio(data, max_seconds=...)` in a limited child process."""
    header, body = _run(CHILD_COMMAND, "load", data, max_seconds, limits or DecodeLimits())
    return np.frombuffer(body, dtype=np.float32, count=int(header["samples"])).copy()


def probe_audio_isolated(
    data: bytes, *, max_seconds: float | None = None, limits: DecodeLimits | None = None
) -> AudioInfo:
    """`probe_audio(data, max_seconds=...)` in a limited child process."""
    header, _ = _run(CHILD_COMMAND, "probe", data, max_seconds, limits or DecodeLimits())
    return AudioInfo(**header["info"])


def _run(
    command: tuple[str, ...],
    op: str,
    data: bytes,
    max_seconds: float | None,
    limits: DecodeLimits,
) -> tuple[dict, bytes]:
    request = {"op": op, "max_seconds": max_seconds, "limits": asdict(limits), "size": len(data)}
    payload = json.dumps(request).encode() + b"\n" + bytes(data)
    returncode, out = _zygotes.get(command).call(payload, limits.timeout_s)
    if returncode is None:
        raise AudioDecodeError(
            "decode_timeout", f"decoding the audio took longer than {limits.timeout_s:g} s"
        )
    line, _, body = out.partition(b"\n")
    if returncode != 0 or not line:
        raise _died(returncode, limits)
    header = json.loads(line)
    if not header.get("ok"):
        raise AudioDecodeError(header["code"], header["message"])
    return header, body


def _died(returncode: int, limits: DecodeLimits) -> AudioDecodeError:
    if returncode == -signal.SIGXCPU:
        return AudioDecodeError(
            "decode_timeout", f"decoding the audio used more than {limits.timeout_s:g} CPU seconds"
        )
    if returncode == -signal.SIGKILL:  # not ours (a timeout raises before): the OOM killer
        return AudioDecodeError("decode_limit_exceeded", _memory_message(limits))
    if returncode < 0:
        how = f"signal {signal.Signals(-returncode).name}"
    else:
        how = "no exit status" if returncode == _LOST else f"exit {returncode}"
    return AudioDecodeError(
        "decoder_crashed", f"the audio decoder crashed on this file ({how}); it cannot be read"
    )


def _memory_message(limits: DecodeLimits) -> str:
    return f"decoding the audio needs more than the {limits.memory_mb} MB decoder memory limit"


_LOST = 1 << 16  # the zygote went away before it reported a child's exit


class _Call:
    def __init__(self) -> None:
        self.exited = threading.Event()
        self.returncode = _LOST


class _Zygote:
    """One zygote process and the calls it is running; safe to call from many threads."""

    def __init__(self, command: tuple[str, ...]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = {key: os.environ[key] for key in _ENV_KEEP if key in os.environ}
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # what this process imports
        env["MALLOC_ARENA_MAX"] = "2"  # per-thread malloc arenas would eat the address-space cap
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = "1"  # one thread: safe to fork
        self.process = subprocess.Popen(
            command,
            stdin=theirs,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,  # FFmpeg's own log lines are noise here
            env=env,
            close_fds=True,
        )
        theirs.close()
        self.control = ours
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._lock = threading.Lock()
        self.alive = True
        threading.Thread(target=self._read_exits, name="audio-zygote", daemon=True).start()

    def call(self, payload: bytes, timeout: float) -> tuple[int | None, bytes]:
        """Run one child on `payload`: (exit code, its output), or (None, b"") after killing
        it at the wall-clock `timeout`."""
        ident, call = next(self._ids), _Call()
        mine, child = socket.socketpair()
        try:
            with self._lock:
                if not self.alive:
                    raise OSError("the decoder zygote exited")
                self._calls[ident] = call
                socket.send_fds(self.control, [_REQUEST.pack(b"R", ident)], [child.fileno()])
        finally:
            child.close()
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        try:
            mine.settimeout(timeout)
            try:
                mine.sendall(payload)
                mine.shutdown(socket.SHUT_WR)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the child died before it read everything: its status says why
            while True:
                mine.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = mine.recv(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            self._kill(ident)
            call.exited.wait(5)
            return None, b""
        except ConnectionResetError:
            pass
        finally:
            mine.close()
        if not call.exited.wait(max(deadline - time.monotonic(), 0.0) + 5):
            self._kill(ident)
            return None, b""
        return call.returncode, b"".join(chunks)

    def _kill(self, ident: int) -> None:
        with self._lock:
            if self.alive:
                self.control.send(_REQUEST.pack(b"K", ident))

    def _read_exits(self) -> None:
        while True:
            try:
                message = self.control.recv(_EXITED.size)
            except OSError:
                message = b""
            if len(message) != _EXITED.size:
                break
            ident, code = _EXITED.unpack(message)
            with self._lock:
                call = self._calls.pop(ident, None)
            if call is not None:
                call.returncode = code
                call.exited.set()
        with self._lock:  # the zygote is gone: nobody will report these exits
            self.alive = False
            calls, self._calls = list(self._calls.values()), {}
        for call in calls:
            call.exited.set()


class _Zygotes:
    """One zygote per command, started on first use and again if it dies."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[tuple[str, ...], _Zygote] = {}

    def get(self, command: tuple[str, ...]) -> _Zygote:
        with self._lock:
            zygote = self._running.get(command)
            if zygote is None or not zygote.alive or zygote.process.poll() is not None:
                zygote = self._running[command] = _Zygote(command)
            return zygote


_zygotes = _Zygotes()


# --- zygote and child ------------------------------------------------------------------------


def run_zygote(handler: Handler | None = None) -> None:
    """Fork one child per request arriving on stdin (the control socket); report exits."""
    control = socket.socket(fileno=0)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the select below
    children: dict[int, int] = {}  # pid -> request id
    while True:
        ready, _, _ = select.select([control, wake_read], [], [])
        if wake_read in ready:
            os.read(wake_read, 4096)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            code = os.waitstatus_to_exitcode(status)
            control.send(_EXITED.pack(children.pop(pid), code))
        if control not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, _REQUEST.size, 1)
        if not message:  # the parent went away
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            os._exit(0)
        kind, ident = _REQUEST.unpack(message)
        if kind == b"K":
            for pid in [pid for pid, owner in children.items() if owner == ident]:
                os.kill(pid, signal.SIGKILL)
            continue
        pid = os.fork()
        if pid == 0:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for fd in (wake_read, wake_write, control.fileno()):
                os.close(fd)
            code = 1
            try:
                _serve(socket.socket(fileno=fds[0]), handler or _decode)
                code = 0
            finally:
                os._exit(code)  # skip interpreter teardown: the parent waits for this exit
        os.close(fds[0])
        children[pid] = ident


def _apply_limits(limits: DecodeLimits) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cpu = math.ceil(limits.timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))
    try:
        with open("/proc/self/statm") as handle:
            base = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return  # not Linux: the timeout and the CPU cap still apply, the memory cap does not
    cap = base + limits.memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _load_within(data: bytes, max_seconds: float | None, limits: DecodeLimits) -> np.ndarray:
    """Decode, stopping when the output would outgrow a third of the memory limit (the blocks,
    their concatenation and FFmpeg's buffers must fit): a bomb is then reported as what it is
    before native code starts failing its allocations (which FFmpeg does not always survive)."""
    budget = limits.memory_mb * 2**20 / 3 / (4 * SAMPLE_RATE)  # seconds of float32 output
    if max_seconds is not None and max_seconds <= budget:
        return load_audio(data, max_seconds=max_seconds)
    try:
        return load_audio(data, max_seconds=budget)
    except AudioDecodeError as exc:
        if exc.code == "audio_too_long":
            raise AudioDecodeError("decode_limit_exceeded", _memory_message(limits)) from exc
        raise


def _decode(request: dict, data: bytes, limits: DecodeLimits) -> tuple[dict, bytes]:
    if request["op"] == "probe":
        info = probe_audio(data, max_seconds=request["max_seconds"])
        return {"ok": True, "info": asdict(info)}, b""
    audio = _load_within(data, request["max_seconds"], limits)
    return {"ok": True, "samples": len(audio)}, audio.tobytes()


def _serve(conn: socket.socket, handler: Handler) -> None:
    reader = conn.makefile("rb")
    line = reader.readline()
    if not line:
        return
    request = json.loads(line)
    limits = DecodeLimits(**request["limits"])
    _apply_limits(limits)
    try:
        header, body = handler(request, reader.read(int(request["size"])), limits)
    except AudioDecodeError as exc:
        header, body = {"ok": False, "code": exc.code, "message": exc.message}, b""
    except MemoryError:
        header, body = {"ok": False, "code": "decode_limit_exceeded"}, b""
        header["message"] = _memory_message(limits)
    except Exception as exc:  # PyAV raises plain ValueErrors on some malformed streams
        header = {"ok": False, "code": "not_audio"}
        header["message"] = f"the audio cannot be decoded ({type(exc).__name__})"
        body = b""
    conn.sendall(json.dumps(header).encode() + b"\n")
    conn.sendall(body)


if __name__ == "__main__":
    run_zygote()
