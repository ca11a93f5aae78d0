"""Prefill time and decode speed: our generation loop vs plain transformers `generate`.

Both run the same weights (the `small` preset, random init, float32, CPU) on the same prompts
(a ChatML prompt with one clip, time markers on). The baseline is `tests/oracle`: the released
architecture on stock transformers modules, decoded by `Qwen3ForCausalLM.generate` with its
default dynamic KV cache. Runs are interleaved and summarised by medians, because the machines
are shared and noisy; the ratio is what to compare across machines.

    .venv/bin/python benchmarks/generate.py [--preset small] [--clip-seconds 10] [--new-tokens 64]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the oracle lives under tests/
from tests.oracle import ReferenceMossAudio


def timed(fn) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--clip-seconds", type=float, default=10.0)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4, help="rows for the batched figure")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = MossAudioModel(preset_config(args.preset)).eval()
    reference = ReferenceMossAudio.from_model(model)
    processor = MossAudioProcessor.from_pretrained(None)
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(int(args.clip_seconds * 16_000))).astype(np.float32)
    inputs = processor(text="Describe the audio in detail.", audios=[clip])
    n = args.new_tokens
    params = sum(p.numel() for p in model.parameters())

    def ours(tokens: int) -> torch.Tensor:
        return model.generate(**inputs, max_new_tokens=tokens, eos_token_id=[])

    def theirs(tokens: int) -> torch.Tensor:
        return reference.generate(
            inputs["input_ids"],
            inputs["audio_data"],
            inputs["audio_data_seqlens"],
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
        )

    # Warm up both paths, and check that they agree token for token.
    a = ours(n)[0, inputs["input_ids"].shape[1] :]
    b = theirs(n)[0]
    agree = int((a[: len(b)] == b[: len(a)]).sum())

    results: dict[str, dict[str, list[float]]] = {
        name: {"prefill": [], "total": []} for name in ("ours", "transformers")
    }
    with torch.inference_mode():
        for _ in range(args.repeats):
            for name, fn in (("ours", ours), ("transformers", theirs)):
                results[name]["prefill"].append(timed(lambda fn=fn: fn(1))[0])
                results[name]["total"].append(timed(lambda fn=fn: fn(n))[0])

    batch = processor(
        text=["Describe the audio in detail."] * args.batch, audios=[clip] * args.batch
    )
    batched = []
    with torch.inference_mode():
        for _ in range(max(1, args.repeats // 2)):
            batched.append(
                timed(lambda: model.generate(**batch, max_new_tokens=n, eos_token_id=[]))[0]
            )

    prompt_len = inputs["input_ids"].shape[1]
    print(
        f"preset {args.preset}: {params / 1e6:.1f}M parameters, float32, {args.threads} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    print(
        f"prompt: {prompt_len} tokens ({args.clip_seconds:.1f} s clip), {n} new tokens, "
        f"{args.repeats} interleaved repeats (medians); greedy outputs agree on {agree}/{n} tokens"
    )
    print(f"{'':14}{'prefill (s)':>12}{'decode tok/s':>14}{'total (s)':>11}")
    summary = {}
    for name, runs in results.items():
        prefill = statistics.median(runs["prefill"])
        total = statistics.median(runs["total"])
        decode = (n - 1) / max(total - prefill, 1e-9)
        summary[name] = (prefill, decode, total)
        print(f"{name:14}{prefill:12.3f}{decode:14.1f}{total:11.3f}")
    (p_ours, d_ours, t_ours), (p_ref, d_ref, t_ref) = summary["ours"], summary["transformers"]
    print(
        f"ratio ours/transformers: prefill time x{p_ours / p_ref:.2f}, "
        f"decode speed x{d_ours / d_ref:.2f}, end-to-end speed x{t_ref / t_ours:.2f}"
    )
    per_row = statistics.median(batched)
    print(
        f"ours, batch of {args.batch}: {args.batch * n / per_row:.1f} tok/s in total "
        f"(x{args.batch * n / per_row / (n / t_ours):.2f} the single-row rate)"
    )


if __name__ == "__main__":
    main()
