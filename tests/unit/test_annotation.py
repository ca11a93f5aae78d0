"""The annotation engine on generated clips with known ground truth: boundaries near the truth
and never inside a word or a sound, exact coverage, branch accuracy, SFT answers that follow the
annotations, and a corrupt clip that fails alone."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from pipelines.data import SAMPLE_RATE, wav_bytes
from services.annotation.engine import AnnotationConfig, Engine, annotate_items
from services.annotation.segmentation import segment
from services.core.datasets import check_line
from tests.annotation_clips import clip_set
from tests.jobs_env import write_checkpoint

NO_MODEL = {"speech": ["speech-descriptors"], "music": ["music-features"],
            "general": ["signal-tags"]}  # fmt: skip


@pytest.fixture(scope="module")
def clips():
    return clip_set(seed=0, count=12)


@pytest.fixture(scope="module")
def engine():
    return Engine(AnnotationConfig(annotators=NO_MODEL))


def test_segments_cover_every_sample_once_and_never_cut_a_word_or_sound(clips) -> None:
    for audio, truths in clips:
        segments = segment(audio)
        assert segments[0].start == 0 and segments[-1].end == len(audio)
        assert all(a.end == b.start for a, b in itertools.pairwise(segments))
        inside = [w for t in truths for w in (t.words or [(t.start, t.end)])]
        for cut in (s.start / SAMPLE_RATE for s in segments[1:]):
            hit = [(a, b) for a, b in inside if a + 0.01 < cut < b - 0.01]
            assert not hit, f"a boundary at {cut:.2f} s cuts {hit}"


def test_event_boundaries_are_within_0_3_s_of_the_truth(clips, engine) -> None:
    errors = []
    for audio, truths in clips:
        found = [e for r in engine.records(audio) for e in r["events"]]
        for truth in truths:
            overlap = [e for e in found if e["start"] < truth.end and e["end"] > truth.start]
            assert overlap, f"nothing found at {truth.start:.2f}-{truth.end:.2f} s ({truth.label})"
            start, end = min(e["start"] for e in overlap), max(e["end"] for e in overlap)
            errors += [abs(start - truth.start), abs(end - truth.end)]
    print(f"boundary error: median {np.median(errors):.3f} s, max {max(errors):.3f} s "
          f"({len(errors)} boundaries)")  # fmt: skip
    assert max(errors) <= 0.3


def test_branch_accuracy_is_reported_and_high(clips, engine) -> None:
    right, total, confusion = 0, 0, {}
    for audio, truths in clips:
        records = engine.records(audio)
        for truth in truths:

            def overlap(r, t=truth):
                return sum(max(0.0, min(e["end"], t.end) - max(e["start"], t.start))
                           for e in r["events"])  # fmt: skip

            best = max(records, key=overlap)
            confusion[(truth.branch, best["branch"])] = (
                confusion.get((truth.branch, best["branch"]), 0) + 1
            )
            right += best["branch"] == truth.branch
            total += 1
    accuracy = right / total
    print(f"branch accuracy {accuracy:.3f} on {total} parts; confusion {confusion}")
    assert accuracy >= 0.9


def test_lines_are_valid_and_sft_answers_follow_the_annotations(clips, engine) -> None:
    for n, (audio, _) in enumerate(clips[:6]):
        outcome = engine.annotate({"id": f"c{n}", "audio": f"{n}.wav"}, wav_bytes(audio))
        assert outcome.error is None
        _line, problems = check_line(1, json.dumps(outcome.sft))
        assert not problems, problems
        records = outcome.line["annotation"]["segments"]
        events = outcome.line.get("events", [])
        by_kind = {}
        for example in outcome.sft["examples"]:
            by_kind.setdefault(example["kind"], []).append(example)
        assert by_kind["caption"][0]["answer"] == outcome.line["caption"]
        for record in records:  # the unified caption names every segment with its times
            if record.get("tags") != ["silence"] and record["events"]:
                assert f"{record['start']:.1f}-{record['end']:.1f} s:" in outcome.line["caption"]
        for asked in by_kind.get("event_at", []):
            second = int(asked["prompt"].split()[3])
            assert any(asked["answer"].endswith(e["label"]) for e in events
                       if e["start"] <= second <= e["end"])  # fmt: skip
        for asked in by_kind.get("count", []):
            label = asked["prompt"].removeprefix("How many ").removesuffix(" events are there?")
            assert asked["answer"] == str(sum(e["label"] == label for e in events))
        said = [s["text"] for s in outcome.line.get("segments", [])]
        for asked in by_kind.get("transcript", []):
            assert asked["answer"] == " ".join(said)


def test_a_corrupt_clip_fails_alone_with_a_clear_error(clips, engine) -> None:
    audio, _ = clips[0]
    store = {"good.wav": wav_bytes(audio), "bad.wav": b"RIFF\x10\x00\x00\x00WAVEfmt junk"}
    items = [{"id": "a", "audio": "good.wav"}, {"id": "b", "audio": "bad.wav"},
             {"id": "c", "audio": "missing.wav"}, {"id": "d", "audio": "good.wav"}]  # fmt: skip
    outcomes = list(annotate_items(engine, items, lambda key: store[key]))
    assert [o.error is None for o in outcomes] == [True, False, False, True]
    assert outcomes[1].error["code"] in ("not_audio", "undecodable_audio")
    assert outcomes[2].error["code"] == "audio_not_found"


def test_the_speech_branch_runs_a_platform_model(tmp_path, clips) -> None:
    from services.core.settings import Settings

    write_checkpoint(tmp_path / "models" / "tiny")
    settings = Settings(home=tmp_path, default_model="tiny")
    engine = Engine(AnnotationConfig(), settings)
    audio, _truths = next(c for c in clips if any(t.branch == "speech" for t in c[1]))
    records = engine.records(audio)
    speech = [r for r in records if r["branch"] == "speech"]
    assert speech and all(r["annotators"] == ["moss-transcribe", "speech-descriptors"]
                          for r in speech)  # fmt: skip
    assert all("transcript" in r and r["asr_model"] == "tiny" for r in speech)


def test_plug_ins_are_chosen_by_configuration() -> None:
    config = AnnotationConfig(annotators={"general": ["tests.unit.test_annotation:Shouting"]})
    engine = Engine(config)
    rng = np.random.default_rng(0)
    audio = (0.003 * rng.standard_normal(3 * SAMPLE_RATE)).astype(np.float32)
    audio[SAMPLE_RATE : 2 * SAMPLE_RATE] += rng.uniform(-0.5, 0.5, SAMPLE_RATE).astype(np.float32)
    records = [r for r in engine.records(audio) if r["events"]]
    assert records[0]["tags"] == ["shout"] and records[0]["annotators"] == ["shouting"]
    with pytest.raises(ValueError, match="unknown annotator 'nope'"):
        Engine(AnnotationConfig(annotators={"general": ["nope"]}))


class Shouting:
    """A plug-in tagger, as a team would add one (`module:Class` in MOSS_ANNOTATORS)."""

    name = "shouting"

    def annotate(self, audio, record):
        return {"tags": ["shout"], "caption": "someone shouts"}
