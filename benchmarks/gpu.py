"""The engine on a GPU: the 4B and 8B presets in bf16 (SDPA attention), random weights.

For each preset: batch-1 decode speed against the card's read bandwidth measured in the same
run (the share of the bandwidth that reading the weights and the KV cache per token uses), then
tokens/s and requests/s with 1, 16 and 64 concurrent requests through `BatchingEngine` (what a
generator worker or the KServe generator runs), against the same requests one after another
(`model.generate`, batch 1), with the outputs compared token for token (greedy), and the peak
GPU memory. Audio features are made once per request by the model's own encoder.

Sized to finish in under 5 minutes on one H100/H200-class card (both presets). `--quick` runs the
tiny preset on the CPU: tests/unit/test_benchmarks.py checks the form of its output.

    .venv/bin/python benchmarks/gpu.py [--presets 4b,8b] [--levels 1,16,64] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from model.tokens import STOP_TOKEN_IDS
from services.inference.engine import BatchingEngine, GenerationRequest


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def read_bandwidth(device: torch.device, mb: int) -> float:
    """Bytes per second a large on-device sum reads (a read-only stream), median of 5."""
    data = torch.ones(mb * 2**20 // 4, dtype=torch.float32, device=device)
    data.sum()
    sync(device)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        data.sum()
        sync(device)
        times.append(time.perf_counter() - start)
    return data.numel() * data.element_size() / statistics.median(times)


def build(preset: str, device: torch.device, dtype: torch.dtype) -> MossAudioModel:
    """Random weights made on the device itself (an 8B model in float32 on the host would need
    36 GB and minutes of initialisation)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            model = MossAudioModel(preset_config(preset))
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def decode_bytes(model) -> int:
    """Weight bytes one decode step reads: the decoder layers, the final norm and the LM head
    (the embedding table contributes one row, unless it is the tied LM head)."""
    read = {p.data_ptr(): p for p in model.language_model.parameters()}
    read.pop(model.language_model.embed_tokens.weight.data_ptr())
    read[model.lm_head.weight.data_ptr()] = model.lm_head.weight
    return sum(p.numel() * p.element_size() for p in read.values())


def make_requests(model, processor, count: int, new_tokens: int, seconds: float):
    rng = np.random.default_rng(0)
    requests = []
    for i in range(count):
        length = seconds * (0.5 + rng.random())  # clips of different lengths: rows differ
        clip = (0.1 * rng.standard_normal(int(length * 16_000))).astype(np.float32)
        inputs = processor(text=f"Question {i}: what do you hear?", audios=[clip])
        device = model.lm_head.weight.device
        with torch.inference_mode():
            encoded = model.encode_audio(
                inputs["audio_data"].to(device, model.lm_head.weight.dtype),
                inputs["audio_data_seqlens"].to(device),
            )
            audio = model.project_audio(encoded)
        requests.append(GenerationRequest(inputs["input_ids"][0].tolist(), audio, new_tokens))
    return requests


def alone(model, request: GenerationRequest) -> list[int]:
    """Batch 1 through `model.generate`, cut after the first stop token as the engine does."""
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([request.prompt_ids]),
            audio_embeddings=request.audio,
            max_new_tokens=request.max_new_tokens,
        )
    tokens = out[0, len(request.prompt_ids) :].tolist()
    for n, token in enumerate(tokens):
        if token in STOP_TOKEN_IDS:
            return tokens[: n + 1]
    return tokens


def through_engine(engine: BatchingEngine, requests) -> tuple[float, list[list[int]]]:
    device = engine.model.lm_head.weight.device
    sync(device)
    start = time.perf_counter()
    handles = [engine.submit(r) for r in requests]
    tokens = [h.result(600) for h in handles]
    sync(device)
    return time.perf_counter() - start, tokens


def bench(preset: str, args, device: torch.device, dtype: torch.dtype, bandwidth: float) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    model = build(preset, device, dtype)
    processor = MossAudioProcessor.from_pretrained(None)
    levels = [int(level) for level in args.levels.split(",")]
    requests = make_requests(model, processor, max(levels), args.new_tokens, args.clip_seconds)
    weights = decode_bytes(model)
    print(f"\n{preset}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters, "
          f"{dtype}, weights read per token {weights / 2**30:.2f} GiB; built in "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip

    # Batch-1 decode: seconds per token beyond the prefill, from two budgets.
    short = GenerationRequest(requests[0].prompt_ids, requests[0].audio, 2)
    alone(model, short)  # warm up
    sync(device)
    t0 = time.perf_counter()
    alone(model, short)
    sync(device)
    t1 = time.perf_counter()
    expected = [alone(model, requests[0])]
    sync(device)
    t2 = time.perf_counter()
    per_token = ((t2 - t1) - (t1 - t0)) / (args.new_tokens - 2)
    kv = 2 * model.config.language_config.num_hidden_layers  # keys and values per layer
    kv *= model.config.language_config.num_key_value_heads * model.config.language_config.head_dim
    kv_bytes = kv * (len(requests[0].prompt_ids) + args.new_tokens / 2) * 2  # bf16, mean length
    fraction = (weights + kv_bytes) / per_token / bandwidth
    print(f"batch-1 decode: {1 / per_token:.1f} tok/s, reads {(weights + kv_bytes) / 2**30:.2f} "
          f"GiB per token: {(weights + kv_bytes) / per_token / 1e9:.0f} GB/s = "
          f"{fraction:.2f} of the measured read bandwidth")  # fmt: skip

    slot_tokens = max(len(r.prompt_ids) for r in requests) + args.new_tokens + 16
    engine = BatchingEngine(
        model,
        max_batch=max(levels),
        kv_budget_bytes=args.kv_cache_gb * 2**30,
        slot_tokens=slot_tokens,
        prefix_cache_bytes=0,
    )
    print(f"engine: {engine.memory['slots']} slots of {slot_tokens} tokens, KV cache "
          f"{engine.memory['kv_cache_bytes'] / 2**30:.2f} GiB")  # fmt: skip
    through_engine(engine, requests[:2])  # warm up
    print("clients | engine tok/s | engine req/s | sequential tok/s | engine / sequential | "
          "requests with tokens equal to batch 1")  # fmt: skip
    for level in levels:
        batch = requests[:level]
        while len(expected) < level:
            expected.append(alone(model, requests[len(expected)]))
        seconds, tokens = through_engine(engine, batch)
        sequential = t2 - t1  # one request at batch 1 (prefill + new tokens), measured above
        produced = sum(len(t) for t in tokens)
        equal = sum(t == e for t, e in zip(tokens, expected, strict=False))
        rate, baseline = produced / seconds, args.new_tokens / sequential
        print(f"{level:7d} | {rate:.0f} | {level / seconds:.2f} | {baseline:.0f} | "
              f"x{rate / baseline:.2f} | {equal}/{level}")  # fmt: skip
    engine.close()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        print(f"peak GPU memory: {peak:.1f} GiB ({torch.cuda.get_device_name(device)})")
    del model, engine
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="4b,8b")
    parser.add_argument("--levels", default="1,16,64")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--clip-seconds", type=float, default=8.0)
    parser.add_argument("--kv-cache-gb", type=float, default=16.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny preset on the CPU")
    args = parser.parse_args()
    if args.quick:
        args.presets, args.levels, args.new_tokens, args.device = "tiny", "1,4", 8, "cpu"
        args.clip_seconds, args.kv_cache_gb = 2.0, 0.05
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or use --quick on the CPU")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    bandwidth = read_bandwidth(device, 4096 if device.type == "cuda" else 256)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, read bandwidth {bandwidth / 1e9:.0f} GB/s")
    for preset in args.presets.split(","):
        bench(preset, args, device, dtype, bandwidth)


if __name__ == "__main__":
    main()
