"""Benchmarks' `--quick` modes: they run, print their table, and the outputs they compare agree.
Speed is never asserted here (benchmarks print figures; machines are shared and noisy)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_benchmark_quick_mode() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "engine.py"), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=True,
    )
    rows = [line.split() for line in done.stdout.splitlines() if re.match(r"^\s+\d+\s", line)]
    assert [int(r[0]) for r in rows] == [1, 4], done.stdout
    for row in rows:
        assert all(float(x) > 0 for x in row[1:7]), row  # every figure printed
        assert row[7] == "True", f"the engine's tokens differ from sequential generation: {row}"
        agreed, total = row[8].split("/")
        assert agreed == total, f"transformers' greedy tokens differ: {row}"
    repeated = re.search(r"(\d+) prefix hits\); outputs equal: (\w+)", done.stdout)
    assert repeated, done.stdout
    assert int(repeated[1]) > 0 and repeated[2] == "True"


def test_encoder_benchmark_quick_mode() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "encoder.py"), "--quick", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=True,
    )
    batched = [
        line.split(" | ") for line in done.stdout.splitlines() if re.match(r"^\s+\d+ \|", line)
    ]
    assert [int(r[0]) for r in batched] == [1, 4], done.stdout
    assert all(r[4].strip() == "True" for r in batched), f"batched outputs differ: {done.stdout}"
    lengths = [
        line.split(" | ") for line in done.stdout.splitlines() if re.match(r"^\d+ s \|", line)
    ]
    assert [r[0] for r in lengths] == ["10 s", "60 s"], done.stdout
    assert [int(r[4]) for r in lengths] == [125, 750]  # 12.5 tokens per second of audio


def test_gpu_benchmark_quick_mode_runs_on_the_cpu() -> None:
    """The GPU script's code path (build on the device, bandwidth, batch-1, engine levels),
    on the tiny preset and the CPU: what a lent GPU will run at full size."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        check=True,
    )
    assert re.search(r"read bandwidth \d+ GB/s", done.stdout), done.stdout
    assert re.search(r"= \d\.\d\d of the measured read bandwidth", done.stdout), done.stdout
    rows = [line.split(" | ") for line in done.stdout.splitlines() if re.match(r"^\s+\d+ \|", line)]
    assert [int(r[0]) for r in rows] == [1, 4], done.stdout
    for row in rows:
        assert row[5] == f"{int(row[0])}/{int(row[0])}", f"engine tokens differ: {row}"


def run_quick(script: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--quick"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        check=True,
    )
    return done.stdout


def test_jobs_benchmark_quick_mode_runs_the_real_stack() -> None:
    out = run_quick("jobs.py")
    assert re.search(r"one job, in-process: \d+ ms; through the platform: \d+ ms", out), out
    rows = re.findall(
        r"^\s*(\d+) concurrent clients: ([\d.]+) jobs/s .* no platform: ([\d.]+)", out, re.M
    )
    assert [int(r[0]) for r in rows] == [1, 2], out
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows), out


def test_kserve_benchmark_quick_mode_gives_the_same_text_on_every_path() -> None:
    out = run_quick("kserve.py")
    paths = re.findall(r"^\s+(local|kserve-http|kserve-grpc)\s+encode", out, re.M)
    assert paths == ["local", "kserve-http", "kserve-grpc"], out
    assert "same greedy text on all three paths: True" in out, out
