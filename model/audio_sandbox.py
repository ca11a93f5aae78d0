"""Decoding in a child process with limits, so that hostile audio costs a child, never the
gateway or a worker.

FFmpeg's demuxers and decoders are native code: a crash there (PyAV 18 segfaults on planar
frames of 8+ channels; other bugs will come) kills the whole Python process, and a
decompression bomb can take gigabytes before any Python check runs. So every call runs
`load_audio` or `probe_audio` in a fresh process (`python -m model.audio_sandbox`, which
imports PyAV and numpy only), started with an empty environment (no secrets), that caps its
own address space, CPU seconds and core files before it reads a byte of the upload. The parent
adds a wall-clock timeout. A child that dies becomes `AudioDecodeError("decoder_crashed")`;
one that hits a limit becomes `decode_limit_exceeded` or `decode_timeout`.

A child is always started ahead of need (one spare, waiting on its stdin), so a request does
not pay the ~0.15 s interpreter start-up unless several arrive at once. Each child serves one
request and exits: nothing of one upload survives into the next.

Protocol, over the child's stdin/stdout: one JSON header line, then raw bytes (the upload in;
float32 samples out).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass

import numpy as np

from .audio import AudioDecodeError, AudioInfo, load_audio, probe_audio
from .audio_formats import SAMPLE_RATE


@dataclass(frozen=True)
class DecodeLimits:
    memory_mb: int = 2048  # address space the child may add to what it starts with
    timeout_s: float = 120.0  # wall clock; CPU time is capped at the same number of seconds


CHILD_COMMAND = (sys.executable, "-m", "model.audio_sandbox")
# The child needs to find the interpreter's packages and nothing else of ours.
_ENV_KEEP = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


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
    child = _spares.take(command)
    try:
        out, _ = child.communicate(
            json.dumps(request).encode() + b"\n" + bytes(data), timeout=limits.timeout_s
        )
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise AudioDecodeError(
            "decode_timeout", f"decoding the audio took longer than {limits.timeout_s:g} s"
        ) from None
    line, _, body = out.partition(b"\n")
    if child.returncode != 0 or not line:
        raise _died(child.returncode, limits)
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
    how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit {returncode}"
    return AudioDecodeError(
        "decoder_crashed", f"the audio decoder crashed on this file ({how}); it cannot be read"
    )


def _memory_message(limits: DecodeLimits) -> str:
    return f"decoding the audio needs more than the {limits.memory_mb} MB decoder memory limit"


class _Spares:
    """One child per command started ahead of need, waiting for its request on stdin."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready: dict[tuple[str, ...], subprocess.Popen] = {}

    def take(self, command: tuple[str, ...]) -> subprocess.Popen:
        with self._lock:
            child = self._ready.pop(command, None)
        if child is None or child.poll() is not None:
            child = _start(command)
        threading.Thread(target=self._refill, args=(command,), daemon=True).start()
        return child

    def _refill(self, command: tuple[str, ...]) -> None:
        child = _start(command)
        with self._lock:
            if command not in self._ready:
                self._ready[command] = child
                return
        child.kill()  # another request refilled first
        child.wait()


def _start(command: tuple[str, ...]) -> subprocess.Popen:
    env = {key: os.environ[key] for key in _ENV_KEEP if key in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)  # what this process imports
    env["MALLOC_ARENA_MAX"] = "2"  # per-thread malloc arenas would eat the address-space cap
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # FFmpeg's own log lines are noise here
        env=env,
        close_fds=True,
    )


_spares = _Spares()


# --- child -----------------------------------------------------------------------------------


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


def _serve(stdin, stdout) -> None:
    line = stdin.readline()
    if not line:
        return  # a spare whose parent went away
    request = json.loads(line)
    limits = DecodeLimits(**request["limits"])
    _apply_limits(limits)
    try:
        data = stdin.read(int(request["size"]))
        if request["op"] == "probe":
            info = probe_audio(data, max_seconds=request["max_seconds"])
            header, body = {"ok": True, "info": asdict(info)}, b""
        else:
            audio = _load_within(data, request["max_seconds"], limits)
            header, body = {"ok": True, "samples": len(audio)}, audio.tobytes()
    except AudioDecodeError as exc:
        header, body = {"ok": False, "code": exc.code, "message": exc.message}, b""
    except MemoryError:
        header, body = {"ok": False, "code": "decode_limit_exceeded"}, b""
        header["message"] = _memory_message(limits)
    except Exception as exc:  # PyAV raises plain ValueErrors on some malformed streams
        header = {"ok": False, "code": "not_audio"}
        header["message"] = f"the audio cannot be decoded ({type(exc).__name__})"
        body = b""
    stdout.write(json.dumps(header).encode() + b"\n")
    stdout.write(body)
    stdout.flush()


if __name__ == "__main__":
    _serve(sys.stdin.buffer, sys.stdout.buffer)
    os._exit(0)  # skip interpreter teardown: the parent waits for this exit
