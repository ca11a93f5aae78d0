"""The instruction pairs built from labels agree with the labels (services.core.sft)."""

from __future__ import annotations

import random

from model.timestamps import parse_timestamps
from pipelines.data import EVENT_TYPES, generate_dataset, read_manifest
from services.core.registry import gate_families, thresholds_for
from services.core.sft import build_examples, families_of
from services.core.storage import LocalStorage


def test_event_answers_follow_the_events(tmp_path) -> None:
    storage = LocalStorage(tmp_path)
    key, _ = generate_dataset(storage, "d", 30, seed=3)
    clips, _ = read_manifest(storage, key)
    rng = random.Random(0)
    for clip in clips:
        events = clip["events"]
        assert all(e["label"] in EVENT_TYPES and 0 < e["start"] < e["end"] <= clip["duration"]
                   for e in events)  # fmt: skip
        examples = build_examples(clip, rng)
        for asked in (x for x in examples if x["kind"] == "event_at"):
            second = int(asked["prompt"].split()[3])
            assert any(asked["answer"] == f"a {e['label']}" for e in events
                       if e["start"] <= second <= e["end"])  # fmt: skip
        (count,) = (x for x in examples if x["kind"] == "count")
        label = count["prompt"].removeprefix("How many ").removesuffix(" events are there?")
        assert count["answer"] == str(sum(e["label"] == label for e in events))
        (start,) = (x for x in examples if x["kind"] == "event_start")
        label = start["prompt"].removeprefix("When does the ").removesuffix(" start?")
        label = label.removeprefix("first ")
        first = min(e["start"] for e in events if e["label"] == label)
        assert float(start["answer"]) == round(first, 1)
        (listed,) = (x for x in examples if x["kind"] == "timestamps")
        parsed = parse_timestamps(listed["answer"])
        assert [(p.start, p.end, p.text) for p in parsed] == [
            (e["start"], e["end"], e["label"]) for e in events
        ]
        (caption,) = (x for x in examples if x["kind"] == "caption")
        assert caption["answer"] == clip["caption"]


def test_speech_answers_follow_the_segments() -> None:
    clip = {
        "audio": "a.wav",
        "segments": [
            {"start": 2.5, "end": 4.0, "text": "turn left"},
            {"start": 0.2, "end": 1.8, "text": "hello there"},
        ],
        "events": [{"label": "door knock", "start": 4.5, "end": 5.2}],
        "instructions": [{"prompt": "Who knocks?", "answer": "Nobody knows."}],
    }
    examples = {x["kind"]: x for x in build_examples(clip, random.Random(0))}
    assert examples["transcript"] == {
        "task": "transcribe", "kind": "transcript", "prompt": "", "answer": "hello there turn left"
    }  # fmt: skip
    assert examples["segments"]["answer"] == "[0.20-1.80] hello there\n[2.50-4.00] turn left"
    assert "timestamps" not in examples  # one timestamped answer per clip: the speech
    assert examples["event_at"]["answer"] == "a door knock"
    assert examples["instruction"]["prompt"] == "Who knocks?"
    assert examples["caption"]["answer"] == "A door knock at 4.5 s."
    assert families_of([clip]) == {"speech", "events", "caption", "instructions"}
    assert families_of([{"audio": "b.wav", "transcript": "hi"}]) == {"speech"}


def test_built_examples_are_used_as_they_are() -> None:
    own = [{"task": "caption", "kind": "caption", "answer": "Rain on a roof."}]
    clip = {"audio": "a.wav", "transcript": "ignored", "examples": own}
    assert build_examples(clip, random.Random(0)) == [dict(own[0], prompt="")]


def test_gate_thresholds_by_family_and_model_name() -> None:
    config = {
        "production": {"event_qa_accuracy": 0.5, "wer": 0.5},
        "models": {"speechy": {"production": {"wer": 0.1, "event_qa_accuracy": None}}},
    }
    assert thresholds_for(config, "other") == {"production": {"event_qa_accuracy": 0.5, "wer": 0.5}}
    assert thresholds_for(config, "speechy") == {"production": {"wer": 0.1}}
    limits = config["production"]
    assert gate_families(limits, {"wer": 0.3, "cer": 0.1}) == ({"speech"}, {"events"})
    assert gate_families(limits, {"caption_wer": 0.3}) == (set(), {"speech", "events"})
    assert gate_families({"my_metric": 1.0}, {}) == ({"other"}, set())
