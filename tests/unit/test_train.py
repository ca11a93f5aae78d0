"""Training: the loss falls on a fixed batch; a resumed run equals an uninterrupted one; LoRA."""

from __future__ import annotations

import itertools
import json
from collections import Counter

import numpy as np
import pytest
import torch

from model import MossAudioModel, preset_config
from model.tokens import IM_START_ID
from pipelines.data import generate_dataset, read_manifest
from pipelines.lora import LoRALinear, merged_copy
from pipelines.train import (
    STATE_FILE,
    Examples,
    TrainConfig,
    batches,
    epoch_indices,
    set_dropout,
    train,
)
from services.core.storage import LocalStorage

KINDS = ("event_at", "event_start", "count", "caption", "timestamps")


def dataset(tmp_path, processor, clips: int = 16):
    storage = LocalStorage(tmp_path / "objects")
    key, digest = generate_dataset(storage, "t", clips, seed=1, heldout_share=0.0)
    records, again = read_manifest(storage, key)
    assert digest == again and len(records) == clips
    return Examples(records, storage.get_bytes, processor, KINDS, "train")


def fresh_model() -> MossAudioModel:
    torch.manual_seed(0)
    return MossAudioModel(preset_config("tiny"))


def test_answer_tokens_only_are_labelled(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=4)
    example = examples.items[0]
    labelled = [
        t for t, label in zip(example.input_ids, example.labels, strict=True) if label != -100
    ]
    assert processor.decode(labelled).strip() == example.answer
    assert len(labelled) < len(example.input_ids) / 2


def test_loss_falls_on_a_fixed_batch(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=4)
    examples.items = examples.items[:4]
    config = TrainConfig(
        stage="sft", steps=30, batch_size=4, lr=1e-2, warmup_steps=2, train_encoder=True
    )
    result = train(fresh_model(), examples, config)
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_resume_gives_the_same_weights(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor)
    config = TrainConfig(stage="pretrain", steps=6, batch_size=4, lr=2e-3, warmup_steps=2)
    straight = fresh_model()
    train(straight, examples, config)

    first = fresh_model()
    stopped = iter([False, False, True])  # stop after the third step, with a checkpoint
    train(first, examples, config, output_dir=tmp_path / "ckpt", should_stop=lambda: next(stopped))
    assert (tmp_path / "ckpt" / STATE_FILE).is_file()
    resumed = MossAudioModel.from_pretrained(tmp_path / "ckpt")
    train(resumed, examples, config, output_dir=tmp_path / "ckpt", resume=True)

    expected, got = straight.state_dict(), resumed.state_dict()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_lora_trains_adapters_only_and_saves_merged_weights(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=4)
    model = fresh_model()
    base = {k: v.clone() for k, v in model.language_model.state_dict().items()}
    config = TrainConfig(stage="sft", steps=4, batch_size=4, lr=5e-3, decoder="lora", lora_rank=4)
    train(model, examples, config, output_dir=tmp_path / "lora", processor=processor)
    wrapped = [m for m in model.language_model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 7 * 4 and all(not m.base.weight.requires_grad for m in wrapped)
    saved = MossAudioModel.from_pretrained(tmp_path / "lora")
    merged = merged_copy(model)
    assert set(saved.state_dict()) == set(fresh_model().state_dict())  # released names only
    q = "language_model.layers.0.self_attn.q_proj.weight"
    torch.testing.assert_close(saved.state_dict()[q], merged.state_dict()[q])
    assert not torch.equal(saved.state_dict()[q], base["layers.0.self_attn.q_proj.weight"])


def test_time_budget_ends_the_run_with_its_schedule_annealed(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=4)
    rates: list[float] = []
    config = TrainConfig(stage="sft", steps=10_000, batch_size=4, warmup_steps=1, max_seconds=3)
    result = train(fresh_model(), examples, config, on_step=lambda _s, m: rates.append(m["lr"]))
    assert result.steps < 10_000
    assert rates[-1] < 0.2 * config.lr  # annealed to the floor by the clock, not the step count


def test_kind_weights_resample_each_epoch_reproducibly(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=12)
    weights = {"event_at": 2.0, "caption": 0.5, "timestamps": 0.0}
    shown = Counter(
        examples.items[i].kind for i in epoch_indices(examples, np.random.default_rng(0), weights)
    )
    base = Counter(e.kind for e in examples.items)
    assert shown["event_at"] == 2 * base["event_at"] and shown["count"] == base["count"]
    assert shown["timestamps"] == 0 and 0 < shown["caption"] < base["caption"]

    def first_batches() -> list[list[list[int]]]:
        stream = batches(examples, 4, seed=0, kind_weights=weights)
        return [[e.input_ids for e in batch] for batch in itertools.islice(stream, 6)]

    assert first_batches() == first_batches()


def test_dropout_override_makes_training_forward_deterministic(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=2)
    batch = examples.batch(examples.items[:2])
    model = fresh_model().train()
    assert not torch.equal(model(**batch).loss, model(**batch).loss)  # the config's dropout
    set_dropout(model, 0.0)
    assert torch.equal(model(**batch).loss, model(**batch).loss)


def test_shortlist_loss_is_the_softmax_over_the_shortlist(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=2)
    batch = examples.batch(examples.items[:3])
    model = fresh_model().eval()
    used = sorted({t for e in examples.items for t in e.labels if t != -100})
    shortlist = torch.tensor([*used, 0, 1, 2])  # the targets' tokens and a few others
    with torch.no_grad():
        full = model(**batch).logits  # (N, vocab) at the labelled positions
        short = model(**batch, label_vocab=shortlist)
    torch.testing.assert_close(short.logits, full[:, shortlist])
    targets = batch["labels"][:, 1:][batch["labels"][:, 1:] != -100]
    index = torch.tensor([used.index(int(t)) for t in targets])
    expected = torch.nn.functional.cross_entropy(full[:, shortlist], index)
    torch.testing.assert_close(short.loss, expected)
    with pytest.raises(ValueError, match="missing from label_vocab"):
        model(**batch, label_vocab=torch.tensor([t for t in used if t != int(targets[0])]))


def test_shortlist_training_learns_a_fixed_batch(tmp_path, processor) -> None:
    examples = dataset(tmp_path, processor, clips=4)
    examples.items = examples.items[:4]
    config = TrainConfig(
        stage="sft", steps=30, batch_size=4, lr=1e-2, warmup_steps=2, train_encoder=True,
        vocab_shortlist=True, dropout=0.0,
    )  # fmt: skip
    result = train(fresh_model(), examples, config)
    assert result.losses[-1] < 0.5 * result.losses[0]


def test_conversations_train_a_clips_answers_with_each_example_opening_one(
    tmp_path, processor
) -> None:
    single = dataset(tmp_path, processor)
    storage = LocalStorage(tmp_path / "objects")
    records, _ = read_manifest(storage, "datasets/t/manifest.jsonl")
    talks = Examples(records, storage.get_bytes, processor, KINDS, "train", conversations=True)
    assert len(talks) == len(single)  # one conversation per example, opened by it
    long_kinds = ("caption", "timestamps")
    for opening, talk in zip(single.items, talks.items, strict=True):
        assert (talk.clip, talk.kind, talk.answer) == (opening.clip, opening.kind, opening.answer)
        # The first turn is exactly the single-turn prompt inference sends.
        assert talk.prompt_ids == opening.prompt_ids == talk.input_ids[: len(opening.prompt_ids)]
        assert talk.input_ids.count(151654) == opening.input_ids.count(151654)  # one audio
        answers = processor.tokenizer.decode([t for t in talk.labels if t != -100])
        turns = answers.split("<|im_end|>")[:-1]
        kind_of = {e.answer: e.kind for e in single.items if e.clip == talk.clip}
        kinds = [kind_of[t] for t in turns]
        # Every answer of the clip, except questions after a caption (it would give them away).
        wanted = [e for e in single.items if e.clip == talk.clip]
        if opening.kind in long_kinds:
            wanted = [e for e in wanted if e.kind in long_kinds]
        assert sorted(turns) == sorted(e.answer for e in wanted)
        long = [k in long_kinds for k in kinds]
        assert long == sorted(long)  # questions first, then captions and timestamp lists
        # ChatML turns with real special tokens: system, then a user and an assistant per answer.
        assert talk.input_ids.count(IM_START_ID) == 1 + 2 * len(turns)


def test_the_boundary_error_counts_a_missing_boundary_as_missed() -> None:
    """An undertrained model writes points in time and untimed lines: the evaluation scores
    them (this crashed the first run's evaluation once), never fails on them."""
    from pipelines.evaluate import _boundaries_error_ms

    reference = "[1.0-2.0] beep\n[3.0-5.0] noise"
    assert _boundaries_error_ms(reference, reference) == 0.0
    # [1.5] has no end: that boundary counts as missed (the event's length, 1 s).
    assert _boundaries_error_ms("[1.5] beep\n[3.0-5.0] noise", reference) == 1000 * (0.5 + 1) / 4
    # An untimed line misses both boundaries; a missing event counts as its own length twice.
    assert _boundaries_error_ms("beep", reference) == 1000 * (1 + 1 + 2 + 2) / 4


def test_a_team_manifest_trains_every_family_and_skips_a_corrupt_clip(tmp_path, processor):
    from pipelines.data import SAMPLE_RATE, wav_bytes

    storage = LocalStorage(tmp_path)
    tone = np.sin(np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE * 2 * np.pi * 440).astype(np.float32)
    storage.put_bytes("datasets/team/a.wav", wav_bytes(0.3 * tone))
    storage.put_bytes("datasets/team/bad.wav", b"RIFF\x00\x00\x00\x00WAVEjunk")
    lines = [
        {"id": "a", "audio": "a.wav", "transcript": "hello there",
         "segments": [{"start": 0.1, "end": 1.5, "text": "hello there"}],
         "events": [{"label": "tone", "start": 0.0, "end": 2.0}],
         "instructions": [{"prompt": "What pitch?", "answer": "A4."}]},
        {"id": "bad", "audio": "bad.wav", "caption": "Broken."},
        {"id": "typo", "audio": "a.wav", "transcipt": "misspelt field"},
    ]  # fmt: skip
    storage.put_bytes("datasets/team/m.jsonl", "\n".join(map(json.dumps, lines)).encode())
    clips, _ = read_manifest(storage, "datasets/team/m.jsonl")
    assert [c["id"] for c in clips] == ["a", "bad"]  # the typo line is reported and left out
    kinds = TrainConfig(stage="sft").kinds
    examples = Examples(clips, storage.get_bytes, processor, kinds, "train")
    assert [c["id"] for c in examples.clips] == ["a"]
    assert examples.skipped[0][0] == "bad"
    assert set(examples.kind_counts()) == {
        "transcript", "segments", "event_at", "event_start", "count", "caption", "instruction"
    }  # fmt: skip
