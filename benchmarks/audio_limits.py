"""What accepting an upload costs the gateway: decoding it whole in-process (what the gateway
did before) vs probing it in the limited child process (what it does now).

Inputs: a normal 30 s stereo FLAC, a 10 h silent FLAC (a decompression bomb: a few MB that
decode to 2.3 GB of float32), a 7 KB WAV that claims 1 Hz, and an 8-channel WAV (the PyAV
crash). "before" runs `load_audio(data)` with no limit in a fresh process and reports its peak
RSS; "after" runs `probe_audio_isolated(data, max_seconds=3600)` from this process and reports
the wall time, this process's RSS growth and the child's peak RSS. Medians of --repeats runs.

    .venv/bin/python benchmarks/audio_limits.py [--repeats 3] [--skip-before]
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

from model.audio import AudioDecodeError
from model.audio_sandbox import probe_audio_isolated


def flac(seconds: float, channels: int = 1, silent: bool = True, rate: int = 16_000) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    with sf.SoundFile(buffer, "w", rate, channels, format="FLAC", subtype="PCM_16") as out:
        left = int(seconds * rate)
        while left:
            n = min(left, rate * 600)
            block = np.zeros((n, channels), np.int16)
            if not silent:
                block = (rng.standard_normal((n, channels)) * 3000).astype(np.int16)
            out.write(block)
            left -= n
    return buffer.getvalue()


def wav(samples: np.ndarray, rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


CASES = {
    "30 s stereo FLAC": lambda: flac(30, channels=2, silent=False, rate=44_100),
    "10 h silent FLAC": lambda: flac(36_000),
    "WAV at 1 Hz (1 h)": lambda: wav(np.zeros(3600, np.int16), 1),
    "8-channel WAV, 10 s": lambda: wav(np.zeros((441_000, 8), np.int16), 44_100),
}

BEFORE = """
import resource, sys, time
from model.audio import load_audio, AudioDecodeError
data = sys.stdin.buffer.read()
start = time.perf_counter()
try:
    load_audio(data)
    outcome = "accepted"
except AudioDecodeError as exc:
    outcome = exc.code
print(outcome, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def before(data: bytes) -> tuple[str, float, float]:
    """Whole decode in a fresh process: (outcome, seconds, peak RSS MB)."""
    done = subprocess.run(
        [sys.executable, "-c", BEFORE], input=data, capture_output=True, timeout=600
    )
    if done.returncode != 0:
        return f"process died ({done.returncode})", float("nan"), float("nan")
    outcome, seconds, rss_kb = done.stdout.decode().split()
    return outcome, float(seconds), int(rss_kb) / 1024


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def after(data: bytes) -> tuple[str, float, float]:
    """Probe in the child: (outcome, seconds, this process's RSS growth MB)."""
    base = rss_mb()
    start = time.perf_counter()
    try:
        info = probe_audio_isolated(data, max_seconds=3600)
        outcome = f"accepted ({info.seconds:.0f} s)"
    except AudioDecodeError as exc:
        outcome = exc.code
    return outcome, time.perf_counter() - start, rss_mb() - base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-before", action="store_true", help="skip the whole decodes")
    args = parser.parse_args()
    probe_audio_isolated(CASES["30 s stereo FLAC"](), max_seconds=3600)  # start the spare
    rows = []
    for name, make in CASES.items():
        data = make()
        time.sleep(0.5)  # let the spare child start, as it has between real uploads
        runs = []
        for _ in range(args.repeats):
            runs.append(after(data))
            time.sleep(0.5)
        new = (runs[0][0], statistics.median(r[1] for r in runs), max(r[2] for r in runs))
        old = before(data) if not args.skip_before else ("-", float("nan"), float("nan"))
        rows.append({"input": name, "bytes": len(data), "before": old, "after": new})
        print(
            f"{name:22s} {len(data):>10,d} B | before: {old[0]:24s} {old[1]:7.2f} s "
            f"{old[2]:8.0f} MB peak | after: {new[0]:22s} {new[1]:6.3f} s "
            f"{new[2]:+6.1f} MB in the gateway",
            flush=True,
        )
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"largest child process (peak RSS, incl. 'before' runs): {children:.0f} MB")
    print(json.dumps(rows, default=str))


if __name__ == "__main__":
    main()
