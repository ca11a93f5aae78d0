"""Coverage-guided fuzzing (atheris: libFuzzer for Python) of the decode path.

The target is the function the sandbox's child runs on an upload, `model.audio_sandbox._decode`,
called in-process for both operations: `probe` (what the gateway asks) and `load` (the worker's
whole decode, within the sandbox's memory budget). It is seeded with the audio of the hostile
corpus (hostile_corpus.py).

Allowed outcomes: a result, `AudioDecodeError` (any code) or `MemoryError` (which the sandbox
reports as `decode_limit_exceeded`). Anything else is a finding: an exception of another type
(the sandbox's catch-all would turn it into a vague `not_audio`), a native crash, a hang past
`-timeout`, or memory past `-rss_limit_mb`. libFuzzer writes the input to `.fuzz/crash-<sha1>`
(or `timeout-`, `oom-`); replay it with the same command and the file as the only argument.

    .venv/bin/python -m tests.reliability.fuzz_decode -max_total_time=120 [libFuzzer flags]

One process (no -jobs/-workers unless given). With no corpus directory named, it fuzzes
`.fuzz/corpus`, seeding it from the hostile corpus first. Coverage comes from the Python code of
model.audio* (instrumented); FFmpeg and PyAV are native code built without coverage counters,
so they are fuzzed through the Python paths their answers steer, not by their own branches.
`make test-reliability` runs this for a bounded time after the reliability tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["model.audio", "model.audio_formats"]):
    from model import audio_sandbox
    from model.audio import AudioDecodeError

# The budget of a decoding child with MOSS_DECODE_MEMORY_MB=256, and a duration cap like the
# gateway's, so that one input costs at most a few seconds.
LIMITS = audio_sandbox.DecodeLimits(memory_mb=256, timeout_s=10.0)
MAX_SECONDS = 30.0
WORK = Path(".fuzz")
DEFAULTS = {
    "-max_len": "262144",  # bigger seeds are cut: a 10-hour FLAC bomb still is one
    "-timeout": "20",
    "-rss_limit_mb": "3072",
    "-artifact_prefix": f"{WORK}/",
    "-print_final_stats": "1",
}


def decode_one(data: bytes) -> None:
    """Both operations of the sandbox's child on `data`; only the documented errors pass."""
    for op in ("probe", "load"):
        with contextlib.suppress(AudioDecodeError, MemoryError):
            audio_sandbox._decode({"op": op, "max_seconds": MAX_SECONDS}, data, LIMITS)


def seed(directory: Path) -> int:
    """Write the hostile corpus's audio into `directory` (named by digest: idempotent)."""
    from tests.reliability.hostile_corpus import audio_seeds

    directory.mkdir(parents=True, exist_ok=True)
    seeds = audio_seeds()
    for data in seeds:
        (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(seeds)


def main(argv: list[str]) -> None:
    flags = [a for a in argv[1:] if a.startswith("-")]
    inputs = [a for a in argv[1:] if not a.startswith("-")]
    if not inputs:
        corpus = WORK / "corpus"
        print(f"seeding {corpus} with {seed(corpus)} inputs", file=sys.stderr)
        inputs = [str(corpus)]
    WORK.mkdir(exist_ok=True)
    named = {flag.split("=", 1)[0] for flag in flags}
    flags += [f"{key}={value}" for key, value in DEFAULTS.items() if key not in named]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    atheris.Setup([argv[0], *flags, *inputs], decode_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
