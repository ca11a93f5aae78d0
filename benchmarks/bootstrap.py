"""The bootstrap model's figures: the tiny variant trained from scratch with the recipe of
`mossctl up` (services.stack.BOOTSTRAP_RECIPE) on the generated dataset (sound events and
spoken commands), then evaluated on the held-out split, whose speech is spoken by voices the
training split never uses (pipelines.speech.VOICES_HELDOUT).

A direct run of the trainer (no MLflow, no Kubeflow): the same data, recipe and time budget as
the first run of `mossctl up`, so its figures are what that run reaches on this machine.

    .venv/bin/python benchmarks/bootstrap.py [--minutes 9.9] [--clips 600] [--speech-share 0.5]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from model import MossAudioModel, MossAudioProcessor, preset_config
from pipelines.components import EVAL_KINDS
from pipelines.data import generate_dataset, read_manifest
from pipelines.evaluate import evaluate, first_per_kind
from pipelines.train import Examples, TrainConfig, train
from services.core.storage import LocalStorage
from services.stack import BOOTSTRAP_RECIPE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=9.9)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--clips", type=int, default=600)
    parser.add_argument("--speech-share", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--per-kind", type=int, default=100)
    args = parser.parse_args()

    storage = LocalStorage(Path(tempfile.mkdtemp(prefix="moss-bootstrap-")))
    began = time.monotonic()
    key, _ = generate_dataset(storage, "b", args.clips, seed=0, speech_share=args.speech_share)
    clips, _ = read_manifest(storage, key)
    print(f"data: {len(clips)} clips in {time.monotonic() - began:.1f} s", flush=True)
    processor = MossAudioProcessor.from_pretrained(None)
    config = TrainConfig(
        stage="sft", steps=args.steps, batch_size=16, lr=BOOTSTRAP_RECIPE["lr"],
        train_encoder=True, dropout=BOOTSTRAP_RECIPE["dropout"], seed=args.seed,
        max_seconds=60 * args.minutes, vocab_shortlist=BOOTSTRAP_RECIPE["vocab_shortlist"],
        conversations=BOOTSTRAP_RECIPE["conversations"],
    )  # fmt: skip
    examples = Examples(clips, storage.get_bytes, processor, config.kinds, "train",
                        conversations=True, seed=args.seed)  # fmt: skip
    print(f"training on {len(examples)} conversations: {examples.kind_counts()}", flush=True)
    torch.manual_seed(args.seed)
    model = MossAudioModel(preset_config("tiny"))
    began = time.monotonic()

    def log(step: int, metrics: dict[str, float]) -> None:
        if step % 100 == 0:
            print(f"step {step} loss {metrics['loss']:.3f} "
                  f"({time.monotonic() - began:.0f} s)", flush=True)  # fmt: skip

    result = train(model, examples, config, on_step=log)
    trained_s = time.monotonic() - began
    heldout = Examples(clips, storage.get_bytes, processor, EVAL_KINDS, "heldout")
    heldout.items = first_per_kind(heldout.items, args.per_kind)
    metrics, _ = evaluate(model.eval(), heldout, processor)
    figures = {k: round(v, 4) for k, v in sorted(metrics.items())}
    summary = {"steps": result.steps, "train_s": round(trained_s, 1),
               "heldout_by_kind": heldout.kind_counts(), **figures}  # fmt: skip
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
