"""What the KServe hop costs: one segment encoded and answered by the local backend (torch in
the worker process) vs the kserve backend (encoder and generator predictors as separate
processes, Open Inference Protocol over REST and over gRPC, via tritonclient).

A `small`-preset checkpoint (random weights, ~150M parameters) and a 10 s clip; greedy, a fixed
token budget. Runs interleave the three paths and report medians; the ratio is kserve / local.
On this CPU machine the predictors compete with the client for the same 2 cores, so the figure
is an upper bound on the protocol's cost (in a cluster the predictors have their own GPUs).

    .venv/bin/python benchmarks/kserve.py [--preset small] [--seconds 10] [--new-tokens 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from services.core.settings import Settings
from services.inference.kserve import KServeBackend
from services.inference.local import LocalBackend
from services.stack import start_predictor, wait_predictor_ready

NAME = "bench"


def one(backend, waveform: np.ndarray, new_tokens: int) -> tuple[float, float, str]:
    served = backend.lookup(NAME)
    start = time.perf_counter()
    version, (encoded,) = backend.encode(served, [waveform])
    encoded_at = time.perf_counter()
    generation = backend.generate(served, encoded, "Describe the audio.", new_tokens, 0.0, version)
    text = generation.text() if generation.wait(600) else ""
    return encoded_at - start, time.perf_counter() - start, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="tiny preset, one run")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.seconds, args.new_tokens, args.repeats = "tiny", 2.0, 4, 1

    root = Path(tempfile.mkdtemp(prefix="moss-bench-kserve-"))
    checkpoint = root / NAME
    torch.manual_seed(0)
    MossAudioModel(preset_config(args.preset)).save_pretrained(checkpoint)
    MossAudioProcessor.from_pretrained(None).save_pretrained(checkpoint)
    log = (root / "predictors.log").open("wb")
    encoder, e_http, e_grpc = start_predictor("encoder", checkpoint, NAME, log)
    generator, g_http, g_grpc = start_predictor("generator", checkpoint, NAME, log)
    try:
        wait_predictor_ready(e_http, NAME, encoder, timeout=180)
        wait_predictor_ready(g_http, NAME, generator, timeout=180)
        base = {"home": root, "models": f"{NAME}={checkpoint}", "generator_max_batch": 1}
        backends = {
            "local": LocalBackend(Settings(**base)),
            "kserve-http": KServeBackend(Settings(**base, inference_backend="kserve",
                kserve_protocol="http",
                kserve_encoder_url=f"127.0.0.1:{e_http}",
                kserve_generator_url=f"127.0.0.1:{g_http}")),
            "kserve-grpc": KServeBackend(Settings(**base, inference_backend="kserve",
                kserve_protocol="grpc", kserve_encoder_url=f"127.0.0.1:{e_grpc}",
                kserve_generator_url=f"127.0.0.1:{g_grpc}")),
        }  # fmt: skip
        rng = np.random.default_rng(0)
        waveform = (0.1 * rng.standard_normal(int(args.seconds * 16_000))).astype(np.float32)
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in backends}
        texts = {}
        for name, backend in backends.items():  # warm-up: first calls load and compile
            texts[name] = one(backend, waveform, args.new_tokens)[2]
        for _ in range(args.repeats):
            for name, backend in backends.items():
                encode_s, total_s, _ = one(backend, waveform, args.new_tokens)
                times[name].append((encode_s, total_s))
        print(f"preset {args.preset}, {args.seconds:g} s clip, {args.new_tokens} new tokens, "
              f"medians of {args.repeats} interleaved runs (torch threads: "
              f"{torch.get_num_threads()})")  # fmt: skip
        local = statistics.median(t for _, t in times["local"])
        for name, values in times.items():
            encode_s = statistics.median(e for e, _ in values)
            total_s = statistics.median(t for _, t in values)
            print(f"  {name:12s} encode {encode_s * 1000:7.1f} ms   encode+generate "
                  f"{total_s * 1000:7.1f} ms   x{total_s / local:.2f} of local")  # fmt: skip
        same = len(set(texts.values())) == 1
        print(f"  same greedy text on all three paths: {same}")
        for backend in backends.values():
            backend.close()
    finally:
        for process in (encoder, generator):
            process.terminate()
            process.wait(20)


if __name__ == "__main__":
    main()
