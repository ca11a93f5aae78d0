"""Generator throughput: the continuous-batching engine at 1, 8 and 32 concurrent requests,
against the same requests generated one after another.

Same weights (a preset with random init, float32, CPU) and the same prompts (a ChatML prompt
with one clip each, clips of different lengths, time markers on) on both sides:

- engine: N requests submitted at once to `BatchingEngine` (what a generator worker or the
  KServe generator runs), audio already encoded (the encoder is the other stage);
- sequential, ours: `model.generate` batch 1, one request after another (same features);
- sequential, transformers: the oracle (`tests/oracle`, stock transformers modules) through
  `Qwen3ForCausalLM.generate`, one request after another; it encodes the audio itself.

Outputs are compared token for token (engine vs ours, exact; vs transformers, agreement).
Runs are interleaved per level; medians of `--repeats`. `--quick` (the tiny preset, small
levels) is what tests/unit/test_benchmarks.py runs: it checks the form and the equality of the
outputs, never the speed.

    .venv/bin/python benchmarks/engine.py [--preset small] [--levels 1,8,32] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from model.tokens import STOP_TOKEN_IDS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the oracle lives under tests/
from services.inference.engine import BatchingEngine, GenerationRequest
from tests.oracle import ReferenceMossAudio


def until_stop(tokens: list[int]) -> list[int]:
    for n, token in enumerate(tokens):
        if token in STOP_TOKEN_IDS:
            return tokens[: n + 1]
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--levels", default="1,8,32")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clip-seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quick", action="store_true", help="tiny preset, levels 1,4, 8 tokens")
    args = parser.parse_args()
    if args.quick:
        args.preset, args.levels, args.new_tokens, args.repeats = "tiny", "1,4", 8, 1
    levels = [int(x) for x in args.levels.split(",")]
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = MossAudioModel(preset_config(args.preset)).eval()
    reference = ReferenceMossAudio.from_model(model)
    processor = MossAudioProcessor.from_pretrained(None)
    rng = np.random.default_rng(0)
    n = args.new_tokens
    prompts, requests = [], []
    for i in range(max(levels)):
        seconds = args.clip_seconds * (0.5 + rng.random())  # lengths differ: rows do too
        clip = (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
        inputs = processor(text=f"Question {i}: what do you hear?", audios=[clip])
        with torch.inference_mode():
            audio = model.project_audio(
                model.encode_audio(inputs["audio_data"], inputs["audio_data_seqlens"])
            )
        prompts.append(inputs)
        requests.append(GenerationRequest(inputs["input_ids"][0].tolist(), audio, n))

    def ours(i: int) -> list[int]:
        r = requests[i]
        new = model.generate(
            torch.tensor([r.prompt_ids]), audio_embeddings=r.audio, max_new_tokens=n
        )
        return until_stop(new[0, len(r.prompt_ids) :].tolist())

    def theirs(i: int) -> list[int]:
        p = prompts[i]
        new = reference.generate(
            p["input_ids"],
            p["audio_data"],
            p["audio_data_seqlens"],
            max_new_tokens=n,
            do_sample=False,
        )
        return until_stop(new[0].tolist())

    engine = BatchingEngine(model, max_batch=max(levels), kv_budget_bytes=1 << 34, slot_tokens=1024)

    def engine_run(count: int) -> list[list[int]]:
        handles = [engine.submit(r) for r in requests[:count]]
        return [h.result(600) for h in handles]

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return time.perf_counter() - start, out

    print(
        f"preset {args.preset}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters, float32, {args.threads} threads, torch {torch.__version__}, "
        f"{platform.processor() or platform.machine()}; {n} new tokens per request, "
        f"medians of {args.repeats} interleaved runs; engine KV cache {engine.memory}"
    )
    print(
        f"{'clients':>7} {'engine tok/s':>12} {'req/s':>7} {'ours seq tok/s':>14} "
        f"{'hf seq tok/s':>12} {'x vs hf':>8} {'x vs ours':>9} {'same as ours':>12} {'hf agree':>9}"
    )
    with torch.inference_mode():
        engine_run(1), ours(0), theirs(0)  # warm up
        for count in levels:
            runs = {"engine": [], "ours": [], "hf": []}
            outputs = {}
            for _ in range(args.repeats):
                seconds, outputs["engine"] = timed(lambda count=count: engine_run(count))
                runs["engine"].append(seconds)
                seconds, outputs["ours"] = timed(
                    lambda count=count: [ours(i) for i in range(count)]
                )
                runs["ours"].append(seconds)
                seconds, outputs["hf"] = timed(
                    lambda count=count: [theirs(i) for i in range(count)]
                )
                runs["hf"].append(seconds)
            tokens = {k: sum(len(o) for o in v) for k, v in outputs.items()}
            rate = {k: tokens[k] / statistics.median(runs[k]) for k in runs}
            same = outputs["engine"] == outputs["ours"]
            agree = sum(
                sum(a == b for a, b in zip(x, y, strict=False))
                for x, y in zip(outputs["engine"], outputs["hf"], strict=True)
            )
            print(
                f"{count:>7} {rate['engine']:>12.1f} "
                f"{count / statistics.median(runs['engine']):>7.2f} {rate['ours']:>14.1f} "
                f"{rate['hf']:>12.1f} {rate['engine'] / rate['hf']:>8.2f} "
                f"{rate['engine'] / rate['ours']:>9.2f} {same!s:>12} "
                f"{agree:>4}/{tokens['hf']:<4}"
            )
    engine.close()
    repeated(model, processor, args, rng, timed)


def repeated(model, processor, args, rng, timed) -> None:
    """Several questions about one clip, one after another: with and without the prefix cache."""
    seconds = 4 * args.clip_seconds
    clip = (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)
    requests = []
    for i in range(8):
        inputs = processor(text=f"Question {i}: what happens at {i} s?", audios=[clip])
        with torch.inference_mode():
            audio = model.project_audio(
                model.encode_audio(inputs["audio_data"], inputs["audio_data_seqlens"])
            )
        requests.append(GenerationRequest(inputs["input_ids"][0].tolist(), audio, 4))
    results = {}
    for name, budget in (("no prefix cache", 0), ("prefix cache", 256 << 20)):
        engine = BatchingEngine(model, max_batch=1, prefix_cache_bytes=budget, slot_tokens=2048)
        engine.submit(requests[0]).result(600)  # warm up (and, with the cache, fill it)
        runs, outputs = [], None
        for _ in range(args.repeats):
            elapsed, outputs = timed(lambda e=engine: [e.submit(r).result(600) for r in requests])
            runs.append(elapsed)
        results[name] = (statistics.median(runs), outputs, engine.prefixes.hits)
        engine.close()
    (cold, cold_out, _), (warm, warm_out, hits) = results.values()
    print(
        f"repeated questions: 8 questions on one {seconds:.1f} s clip "
        f"({len(requests[0].prompt_ids)} prompt tokens), 4 new tokens each: "
        f"{cold:.3f} s without the prefix cache, {warm:.3f} s with it (x{cold / warm:.2f}, "
        f"{hits} prefix hits); outputs equal: {cold_out == warm_out}"
    )


if __name__ == "__main__":
    main()
