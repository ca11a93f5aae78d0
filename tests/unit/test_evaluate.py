"""Scoring per label family: each family the held-out split has gets its metrics, and a
family it lacks gets none (never a crash or a division by zero)."""

from __future__ import annotations

import pytest

from pipelines.evaluate import Prediction, normalize, score
from pipelines.train import Example


def prediction(kind: str, answer: str, text: str, clip: int = 0) -> Prediction:
    return Prediction(Example(clip=clip, input_ids=[], labels=[], kind=kind, answer=answer), text)


def test_speech_only_split_gets_speech_metrics_only() -> None:
    clips = [{"audio": "a.wav", "transcript": "Hello there, turn left."}]
    metrics = score(
        [
            prediction("transcript", "Hello there, turn left.", "hello there turn right"),
            prediction(
                "segments",
                "[0.00-1.00] hello there\n[1.50-2.00] turn left",
                "[0.10-1.00] hello there\n[1.50-2.10] turn left",
            ),
        ],
        clips,
    )
    assert metrics["wer"] == pytest.approx(0.25) and metrics["cer"] > 0
    assert metrics["segments_wer"] == 0.0
    assert metrics["segments_aas_ms"] == pytest.approx(50.0)
    assert not {"event_qa_accuracy", "caption_keyword_recall", "aas_ms"} & set(metrics)


def test_events_use_the_manifests_own_labels_and_captions_without_events() -> None:
    clips = [
        {"audio": "a.wav", "duration": 5.0,
         "events": [{"label": "dog bark", "start": 1.0, "end": 2.0}]},
        {"audio": "b.wav", "caption": "Quiet rain."},
    ]  # fmt: skip
    metrics = score(
        [
            prediction("event_at", "a dog bark", "A dog bark."),
            prediction("event_at", "a dog bark", "a car horn"),
            prediction("count", "1", "1"),
            prediction("event_start", "1.0", "no idea"),  # no number: the clip's duration
            prediction("caption", "Quiet rain.", "quiet rain", clip=1),
        ],
        clips,
    )
    assert metrics["event_qa_accuracy"] == 0.5 and metrics["count_accuracy"] == 1.0
    assert metrics["timestamp_error_median_s"] == 5.0
    assert metrics["caption_wer"] == 0.0
    assert "caption_keyword_recall" not in metrics  # the captioned clip has no events
    assert "wer" not in metrics


def test_instructions_score_exact_match_and_token_f1() -> None:
    metrics = score(
        [
            prediction("instruction", "An agent.", "an agent"),
            prediction("instruction", "The red car", "a red car"),
        ],
        [{"audio": "a.wav", "instructions": [{"prompt": "?", "answer": "An agent."}]}],
    )
    assert metrics["instruction_exact_match"] == 0.5
    assert metrics["instruction_token_f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert normalize("  Hello, World!  ") == "hello world"


def scored(clips: list[dict], kinds: list[tuple[int, str, str]]):
    """The scored examples of an evaluation, as the evaluator holds them (no audio needed)."""
    from pipelines.train import Examples

    examples = object.__new__(Examples)
    examples.clips = clips
    examples.items = [
        Example(clip=c, input_ids=[], labels=[], kind=k, answer=a) for c, k, a in kinds
    ]
    return examples


def test_an_evaluation_names_what_it_was_measured_on() -> None:
    """Same examples of the same manifest: one set digest; another manifest, or fewer examples
    (a lower per-kind cap), or another reference answer: another set, never the same one."""
    from pipelines.evaluate import SCORER_VERSION, evaluation_record

    clips = [{"id": "a", "audio": "datasets/x/a.wav"}, {"id": "b", "audio": "datasets/x/b.wav"}]
    asked = [(0, "event_at", "a chirp"), (1, "count", "2"), (1, "transcript", "open the door")]
    first = evaluation_record(scored(clips, asked), {"wer": 0.5}, "datasets/x/m.jsonl", "m1", 100)
    again = evaluation_record(scored(clips, asked), {"wer": 0.1}, "datasets/x/m.jsonl", "m1", 100)
    assert first["evaluation_set"] == again["evaluation_set"]  # the figures are not the set
    assert first["examples"] == 3 and first["per_kind"] == 100
    assert first["examples_per_family"] == {"events": 2, "speech": 1}
    assert first["manifest"] == "datasets/x/m.jsonl" and first["manifest_digest"] == "m1"
    assert first["evaluator_version"] and first["scorer_version"] == SCORER_VERSION
    key = "datasets/x/m.jsonl"
    changed = [*asked[:2], (1, "transcript", "close the door")]
    others = [
        evaluation_record(scored(clips, asked), {}, key, "m2", 100),
        evaluation_record(scored(clips, asked[:2]), {}, key, "m1", 1),
        evaluation_record(scored(clips, changed), {}, key, "m1", 100),
    ]
    assert len({first["evaluation_set"], *(o["evaluation_set"] for o in others)}) == 4
