"""Long audio: what the 4 s encoder windows and the per-task rule cost.

1. Encoder time against clip length, windowed (`n_window` 200, the official default) vs the
   whole-clip opt-out: windows make the cost linear in the audio's length.
2. For transcription of a long clip: one whole-clip prefill vs the clip cut into segments of at
   most --segment-seconds, prefilled as one batch (what the platform does for transcription).
   Caption, ask and chat always take the whole clip; this measures what splitting buys
   transcription, whose output (not its prompt) is what outgrows a single generation.

Same random weights (the `small` preset, float32, CPU), medians of --repeats interleaved runs.

    .venv/bin/python benchmarks/long_audio.py [--lengths 15,30,60,120] [--long-seconds 300]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from model.features import log_mel_spectrogram
from model.segment import split_audio


def clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(seconds * 16_000))).astype(np.float32)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--lengths", default="15,30,60,120")
    parser.add_argument("--long-seconds", type=float, default=300.0)
    parser.add_argument("--segment-seconds", type=float, default=120.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, preset {args.preset}")  # fmt: skip

    torch.manual_seed(0)
    windowed = MossAudioModel(preset_config(args.preset)).eval()
    whole_config = preset_config(args.preset)
    whole_config.audio_config.n_window = None
    whole = MossAudioModel(whole_config).eval()
    whole.load_state_dict(windowed.state_dict())

    print("\n1. encoder: seconds per clip (median)  windowed | whole-clip | ratio")
    with torch.inference_mode():
        for seconds in [float(s) for s in args.lengths.split(",")]:
            mel = log_mel_spectrogram(clip(seconds))[None]
            times = {"windowed": [], "whole": []}
            for _ in range(args.repeats):
                for name, model in (("windowed", windowed), ("whole", whole)):
                    times[name].append(timed(lambda m=model, x=mel: m.encode_audio(x)))
            a, b = statistics.median(times["windowed"]), statistics.median(times["whole"])
            print(
                f"   {seconds:6.0f} s   {a:7.3f} s ({a / seconds * 1000:5.1f} ms/s audio) | "
                f"{b:7.3f} s ({b / seconds * 1000:5.1f} ms/s) | whole/windowed x{b / a:.2f}"
            )

    print(f"\n2. transcription prefill of {args.long_seconds:.0f} s: whole vs "
          f"{args.segment_seconds:.0f} s segments in one batch")  # fmt: skip
    processor = MossAudioProcessor.from_pretrained(None)
    audio = clip(args.long_seconds, seed=1)
    segments = split_audio(audio, max_seconds=args.segment_seconds)
    instruction = "Transcribe the speech in this audio."
    whole_inputs = processor(text=instruction, audios=[audio])
    split_inputs = processor(text=[instruction] * len(segments), audios=[s.audio for s in segments])
    runs = {"whole": [], "segments": []}
    with torch.inference_mode():
        for _ in range(args.repeats):
            runs["whole"].append(timed(lambda: windowed(**whole_inputs, logits_to_keep=1)))
            runs["segments"].append(timed(lambda: windowed(**split_inputs, logits_to_keep=1)))
    a, b = statistics.median(runs["whole"]), statistics.median(runs["segments"])
    print(f"   whole: {whole_inputs['input_ids'].shape[1]} tokens, {a:.2f} s | "
          f"{len(segments)} segments: {split_inputs['input_ids'].shape[1]} tokens each (padded), "
          f"{b:.2f} s | segments/whole x{b / a:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
