"""The encoder: batched encoding across jobs, and its cost and memory against clip length.

1. Concurrent jobs: N callers, each with its own 5 s clip, through one `EncodeBatcher` (what
   an encoder worker's threads or the encoder predictor's executor do), against the same clips
   encoded one after another (`encode_waveforms`, one clip per pass: the solo encoder before).
   Outputs must agree within float tolerance.
2. Length: seconds of encoder time per second of audio at 30 s, 5 min and 30 min (the 4 s
   windows make it linear), and the peak memory each adds to the process (resident set, measured
   in a fresh child process per length, so one length's peak does not hide the next one's).

Random weights, float32, CPU; medians of --repeats. `--encoder-only 4b` runs part 1 on the
released encoder's size (0.64B parameters) instead of the preset's.

    .venv/bin/python benchmarks/encoder.py [--preset small] [--clients 1,4,8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from model import MossAudioModel, preset_config
from services.inference.encoding import EncodeBatcher, encode_waveforms

MEMORY_CAP_MB = 1024  # documented in docs/benchmarks.md: the 30 min clip must stay under it


def clip(seconds: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


def model_for(preset: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return MossAudioModel(preset_config(preset)).eval()


def concurrent(model, clients: int, repeats: int) -> tuple[float, float, bool]:
    clips = [clip(5.0, seed) for seed in range(clients)]
    one, gathered, equal = [], [], True
    for _ in range(repeats):
        start = time.perf_counter()
        alone = [encode_waveforms(model, [c])[0] for c in clips]
        one.append(time.perf_counter() - start)
        batcher = EncodeBatcher(model)
        with ThreadPoolExecutor(clients) as pool:
            start = time.perf_counter()
            got = [r[0] for r in pool.map(batcher.encode, [[c] for c in clips])]
            gathered.append(time.perf_counter() - start)
        batcher.close()
        for a, b in zip(got, alone, strict=True):
            equal &= bool(torch.allclose(a.features, b.features, atol=1e-4, rtol=1e-4))
    return statistics.median(one), statistics.median(gathered), equal


def one_length(preset: str, seconds: float) -> dict:
    """In this (child) process: encoder time and the peak resident memory the clip adds."""
    model = model_for(preset)
    audio = clip(seconds, seed=1)
    encode_waveforms(model, [clip(1.0, seed=2)])  # warm up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB -> MB (Linux)
    start = time.perf_counter()
    (out,) = encode_waveforms(model, [audio])
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": elapsed, "peak_added_mb": peak - before, "tokens": int(out.token_lengths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--encoder-only", default=None, help="part 1 on this preset's encoder")
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--lengths", default="30,300,1800")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny preset, short runs")
    parser.add_argument("--one-length", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.preset, args.clients, args.lengths, args.repeats = "tiny", "1,4", "10,60", 1
    if args.one_length is not None:
        print(json.dumps(one_length(args.preset, args.one_length)))
        return

    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, preset {args.encoder_only or args.preset}")  # fmt: skip
    model = model_for(args.preset)
    if args.encoder_only:  # the released encoder's size: drop the decoder before building it
        config = preset_config(args.encoder_only)
        from model.encoder import MossAudioEncoder

        model.audio_encoder = MossAudioEncoder(config.audio_config).eval()
    print("concurrent 5 s clips | one by one (ms) | batched (ms) | batched / one by one | equal")
    for clients in [int(c) for c in args.clients.split(",")]:
        one, gathered, equal = concurrent(model, clients, args.repeats)
        print(f"{clients:3d} | {one * 1000:.0f} | {gathered * 1000:.0f} | "
              f"x{one / gathered:.2f} | {equal}")  # fmt: skip

    print("clip | encoder s per audio s | vs the shortest | peak memory added (MB) | tokens")
    base = None
    for seconds in [float(s) for s in args.lengths.split(",")]:
        child = subprocess.run(
            [sys.executable, __file__, "--preset", args.preset, "--threads", str(args.threads),
             "--one-length", str(seconds)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        result = json.loads(child.stdout.splitlines()[-1])
        rate = result["seconds"] / seconds
        base = base or rate
        print(f"{seconds:.0f} s | {rate * 1000:.2f} ms | x{rate / base:.2f} | "
              f"{result['peak_added_mb']:.0f} | {result['tokens']}")  # fmt: skip
    print(f"memory cap for the longest clip: {MEMORY_CAP_MB} MB")


if __name__ == "__main__":
    main()
