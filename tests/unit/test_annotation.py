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
from services.annotation.merge import clip_line
from services.annotation.segmentation import segment
from services.core.datasets import check_line
from services.core.errors import ApiError
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


@pytest.fixture(scope="module")
def annotated(clips, engine):
    """Every test clip annotated once, without labels: (outcome, truths)."""
    return [(engine.annotate({"id": f"c{n}", "audio": f"{n}.wav"}, wav_bytes(audio)), truths)
            for n, (audio, truths) in enumerate(clips)]  # fmt: skip


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


def test_lines_are_valid_and_sft_answers_follow_the_annotations(annotated) -> None:
    for outcome, _ in annotated[:6]:
        assert outcome.error is None
        _line, problems = check_line(1, json.dumps(outcome.sft))
        assert not problems, problems
        records = outcome.line["annotation"]["segments"]
        events = outcome.line.get("events", [])
        by_kind = {}
        for example in outcome.sft["examples"]:
            by_kind.setdefault(example["kind"], []).append(example)
        assert by_kind["caption"][0]["answer"] == outcome.line["caption"]
        assert records and outcome.line["provenance"]["caption"].startswith("derived:")
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


class Mishearing:
    """A plug-in ASR that hears "bed" for "red" (it does not declare `transcribes`, so the
    engine runs it even next to a given transcript), with timed lines like a real one."""

    name = "mishearing-asr"

    def annotate(self, audio, record):
        length = len(audio) / SAMPLE_RATE
        lines = [{"start": 0.0, "end": round(length, 2), "text": "open the bed door"}]
        return {"transcript": "open the bed door", "lines": lines}


def test_a_given_transcript_is_never_contradicted_by_the_asr(clips) -> None:
    engine = Engine(AnnotationConfig(annotators={**NO_MODEL, "speech": [
        "tests.unit.test_annotation:Mishearing", "speech-descriptors"]}))  # fmt: skip
    audio, truths = next(c for c in clips if sum(t.branch == "speech" for t in c[1]) == 1)
    spoken = next(t for t in truths if t.branch == "speech")
    guessed = engine.annotate({"audio": "a.wav"}, wav_bytes(audio))
    assert [s["text"] for s in guessed.line["segments"]] == ["open the bed door"]
    outcome = engine.annotate({"audio": "a.wav", "transcript": "open the red door"},
                              wav_bytes(audio))  # fmt: skip
    line, sft = outcome.line, outcome.sft
    records = line["annotation"]["segments"]
    assert any(r.get("transcript") == "open the bed door" for r in records)  # the ASR ran
    [said] = line["segments"]
    assert said["text"] == "open the red door" and line["provenance"]["segments"] == (
        "derived:transcript"
    )
    assert abs(said["start"] - spoken.start) <= 0.3 and abs(said["end"] - spoken.end) <= 0.3
    assert_caption_follows(line)
    assert 'someone says "open the red door" (' in line["caption"]
    answers = {e["kind"]: e["answer"] for e in sft["examples"]}
    for kind in ("transcript", "segments", "caption"):
        assert "red door" in answers[kind] and "bed" not in answers[kind], kind
    trained = {k: v for k, v in sft.items() if k != "annotation"}
    assert "bed" not in json.dumps(trained)
    assert not check_line(1, json.dumps(sft))[1]


class Counting:
    """A plug-in that counts its calls, on every branch."""

    name = "counting"
    calls: list[str] = []  # noqa: RUF012 (the test reads it)

    def annotate(self, audio, record):
        Counting.calls.append(record["branch"])
        return {}


def test_a_line_costs_only_the_annotator_runs_it_needs(tmp_path, clips) -> None:
    from services.core.settings import Settings

    counting = "tests.unit.test_annotation:Counting"
    engine = Engine(AnnotationConfig(annotators={branch: [counting] for branch in NO_MODEL}))
    audio, truths = next(c for c in clips if {"speech", "general"} <= {t.branch for t in c[1]})
    full = labelled_line(0, truths)
    Counting.calls.clear()
    for given in (full, {k: v for k, v in full.items() if k != "caption"}):
        outcome = engine.annotate(given, wav_bytes(audio))
        assert outcome.line["annotation"]["segments"] == []  # not even segmented
    assert Counting.calls == []
    assert_caption_follows(outcome.line)  # built from the given segments and events
    engine.annotate({k: full[k] for k in ("audio", "events")}, wav_bytes(audio))
    assert set(Counting.calls) == {"speech"}  # its events given: no tagger ran
    Counting.calls.clear()
    engine.annotate({k: full[k] for k in ("audio", "segments")}, wav_bytes(audio))
    assert "speech" not in Counting.calls and Counting.calls  # its speech given: taggers only
    # the platform's ASR runs on a line without a transcript and not next to one
    write_checkpoint(tmp_path / "models" / "tiny")
    real = Engine(AnnotationConfig(), Settings(home=tmp_path, default_model="tiny"))
    for given, ran in (({}, ["moss-transcribe", "speech-descriptors"]),
                       ({"transcript": full["transcript"]}, ["speech-descriptors"])):  # fmt: skip
        records = real.annotate({"audio": "a.wav", **given}, wav_bytes(audio)).line["annotation"]
        speech = [r for r in records["segments"] if r["branch"] == "speech"]
        assert speech and all(r["annotators"] == ran for r in speech), given


# Annotation keeps the truth: given labels win, provenance per field, the vocabulary, and a
# caption that always agrees with the line's segments and events.

LABELS = ("transcript", "segments", "events", "caption", "instructions", "examples")


def labelled_line(n: int, truths) -> dict:
    """A line a team wrote: every label family, from the clip's ground truth."""
    speech = [t for t in truths if t.branch == "speech"]
    sounds = [t for t in truths if t.branch != "speech"]
    line = {
        "id": f"c{n}", "audio": f"{n}.wav", "split": "train",
        "transcript": " ".join(t.label for t in speech) or "nothing is said",
        "segments": [{"start": round(t.start, 3), "end": round(t.end, 3), "text": t.label,
                      "speaker": "narrator"} for t in speech],
        "events": [{"label": t.label, "start": round(t.start, 3), "end": round(t.end, 3)}
                   for t in sounds],
        "caption": f"Clip {n}: the team's own words, with no times.",
        "instructions": [{"prompt": "Who made this?", "answer": "Our field team."}],
    }  # fmt: skip
    return {k: v for k, v in line.items() if v != []}


def caption_clauses(caption: str) -> list[tuple[str, str, str]]:
    """(start, end, text) of each `start-end s: text` clause of a built caption."""
    import re

    marks = list(re.finditer(r"(\d+\.\d)-(\d+\.\d) s: ", caption))
    ends = [m.start() for m in marks[1:]] + [len(caption)]
    return [(m[1], m[2], caption[m.end() : end]) for m, end in zip(marks, ends, strict=True)]


def assert_caption_follows(line: dict) -> None:
    items = sorted([*line.get("segments", []), *line.get("events", [])],
                   key=lambda i: (i["start"], i["end"]))  # fmt: skip
    clauses = caption_clauses(line["caption"])
    assert [(a, b) for a, b, _ in clauses] == [
        (f"{i['start']:.1f}", f"{i['end']:.1f}") for i in items
    ], line["caption"]
    for (_, _, text), item in zip(clauses, items, strict=True):
        said = f'someone says "{item["text"]}"' if "text" in item else f" {item['label']}"
        assert said in text, (text, item)
    if not items:
        assert line["caption"] == "Silence."


def test_the_unified_caption_is_built_from_the_segments_and_events_it_reports(annotated) -> None:
    for outcome, _ in annotated:
        line = outcome.line
        assert line["provenance"]["caption"] == "derived:events" and "segments" not in line
        assert_caption_follows(line)
        assert sum(len(r["events"]) for r in line["annotation"]["segments"]) == len(line["events"])


def test_a_labelled_manifest_keeps_every_given_label(clips, engine) -> None:
    for n, (audio, truths) in enumerate(clips[:3]):
        given = labelled_line(n, truths)
        given["examples"] = [{"task": "ask", "kind": "instruction", "prompt": "Where?",
                              "answer": "Outdoors."}] if n == 0 else None  # fmt: skip
        given = {k: v for k, v in given.items() if v is not None}
        outcome = engine.annotate(json.loads(json.dumps(given)), wav_bytes(audio))
        assert outcome.error is None
        for line in (outcome.line, outcome.sft):
            for key in (*LABELS, "id", "split"):
                if key in given:
                    assert json.dumps(line[key]) == json.dumps(given[key]), key
            assert not check_line(1, json.dumps(line))[1]
        kept = [k for k in LABELS if k in given]
        assert outcome.line["provenance"] == dict.fromkeys(kept, "given")
        built = {} if "examples" in given else {"examples": "derived:" + ",".join(kept)}
        assert outcome.sft["provenance"] == dict.fromkeys(kept, "given") | built
        if "examples" not in given:  # the SFT pairs are built from the given labels
            built = {e["kind"]: e["answer"] for e in outcome.sft["examples"]}
            assert built["caption"] == given["caption"]
            assert built["instruction"] == "Our field team."


def test_a_partly_labelled_line_gets_only_the_missing_fields_with_provenance(clips, engine):
    audio, truths = next(c for c in clips if {"speech", "general"} <= {t.branch for t in c[1]})
    truth = labelled_line(0, truths)
    # a transcript only: said over the speech heard, and the events the engine hears
    only_text = engine.annotate({"audio": "a.wav", "transcript": truth["transcript"]},
                                wav_bytes(audio)).line  # fmt: skip
    assert only_text["transcript"] == truth["transcript"]
    assert [s["text"] for s in only_text["segments"]] == [truth["transcript"]]
    heard = {"general": "signal-tags", "music": "music-features"}
    by = ",".join(sorted({heard[t.branch] for t in truths if t.branch != "speech"}))
    assert only_text["provenance"] == {
        "transcript": "given",
        "segments": "derived:transcript",
        "events": f"annotator:{by}",
        "caption": "derived:segments,events",
    }
    assert "voice" not in {e["label"] for e in only_text["events"]}
    assert_caption_follows(only_text)
    # segments given: kept, the speech is not told twice as an event, the caption quotes them
    timed = engine.annotate({"audio": "a.wav", "segments": truth["segments"],
                             "provenance": {"segments": "annotator:acme-asr/2"}},
                            wav_bytes(audio)).line  # fmt: skip
    assert timed["segments"] == truth["segments"]
    assert timed["provenance"]["segments"] == "annotator:acme-asr/2"  # a guess stays a guess
    assert timed["provenance"]["caption"] == "derived:segments,events"
    assert "voice" not in {e["label"] for e in timed["events"]}
    assert_caption_follows(timed)
    assert all(f'someone says "{s["text"]}"' in timed["caption"] for s in truth["segments"])


def test_a_mapping_file_renames_the_engine_labels_not_the_given_ones(annotated, engine) -> None:
    outcome = next(o for o, _ in annotated if any(e["label"] == "noise burst"
                                                  for e in o.line["events"]))  # fmt: skip
    records, duration = outcome.line["annotation"]["segments"], outcome.line["duration"]
    vocabulary = engine.vocabulary({"noise burst": "static", "never heard": "x"})
    mapped = clip_line({"id": "m", "audio": "m.wav"}, records, duration, vocabulary)
    before = [e["label"] for e in outcome.line["events"]]
    after = [e["label"] for e in mapped["events"]]
    assert after == ["static" if b == "noise burst" else b for b in before]
    assert "a static" in mapped["caption"] and "noise burst" not in mapped["caption"]
    report = vocabulary.report()
    assert {"from": "noise burst", "to": "static", "events": before.count("noise burst")} in (
        report["mapped"]
    )
    assert report["label_map"] == 2
    events = [{"label": "noise burst", "start": 0.0, "end": 0.5}]
    given = clip_line({"audio": "g.wav", "events": events}, records, duration, vocabulary)
    assert given["events"] == [{"label": "noise burst", "start": 0.0, "end": 0.5}]
    assert given["caption"] == "0.0-0.5 s: a noise burst."  # from the given events only


def test_the_default_vocabulary_is_the_served_models_training_labels(tmp_path, annotated) -> None:
    from dataclasses import asdict

    from pipelines.data import EVENT_TYPES, make_clip
    from services.cli.render import labels_line
    from services.core.labels import read_event_labels, training_event_labels, write_event_labels
    from services.core.settings import Settings

    rng = np.random.default_rng(1)
    trained_on = [{"events": [asdict(e) for e in make_clip(rng)[1]]} for _ in range(40)]
    checkpoint = write_checkpoint(tmp_path / "models" / "tiny")
    write_event_labels(checkpoint, training_event_labels(trained_on))  # what train_step writes
    assert read_event_labels(checkpoint) == sorted(EVENT_TYPES)
    engine = Engine(AnnotationConfig(annotators=NO_MODEL),
                    Settings(home=tmp_path, default_model="tiny"))  # fmt: skip
    vocabulary = engine.vocabulary()
    assert vocabulary.labels == frozenset(EVENT_TYPES) and vocabulary.source == "tiny"
    right = total = 0
    for outcome, truths in annotated:  # the same records, merged in the model's vocabulary
        records = outcome.line["annotation"]["segments"]
        line = clip_line({"audio": "a.wav"}, records, outcome.line["duration"], vocabulary)
        for truth in (t for t in truths if t.branch == "general"):
            found = [e for e in line["events"] if e["start"] < truth.end and e["end"] > truth.start]
            right += [e["label"] for e in found] == [truth.label]
            total += 1
        assert {e["label"] for e in line["events"]} <= {*EVENT_TYPES, "melody", "voice",
                                                        "falling sweep"}  # fmt: skip
    print(f"engine labels in the training vocabulary: {right} of {total} sounds right")
    assert total and right == total
    report = vocabulary.report()
    assert {m["to"] for m in report["mapped"]} <= set(EVENT_TYPES) and report["mapped"]
    assert set(report["unmapped"]) <= {"melody", "voice", "falling sweep"}
    shown = labels_line(report)  # what `mossctl annotate` and `mossctl jobs get` print
    assert "the vocabulary of tiny" in shown and "low tone -> low beep" in shown
    untrained = Engine(AnnotationConfig(annotators=NO_MODEL),
                       Settings(home=tmp_path / "none", default_model="tiny"))  # fmt: skip
    assert untrained.vocabulary().labels is None  # no checkpoint, no vocabulary: labels kept


def test_the_job_path_keeps_every_given_label(tmp_path, clips) -> None:
    import hashlib

    from services.core import dataset_store
    from services.core.jobstore import Principal
    from services.jobs.annotate import annotate_job
    from services.jobs.annotations import submit_annotation
    from tests.jobs_env import make_context

    ctx = make_context(tmp_path, annotators=json.dumps(NO_MODEL))
    key_id = ctx.store.authenticate(ctx.store.create_key("acme", ["datasets"])[0]).key_id
    who = Principal(key_id=key_id, tenant="acme", scopes=("datasets",))
    items = []
    spoken = [c for c in clips if any(t.branch == "speech" for t in c[1])]
    for n, (audio, truths) in enumerate([*spoken[:2], clips[0]]):
        data = wav_bytes(audio)
        digest = hashlib.sha256(data).hexdigest()
        ctx.storage.put_bytes(f"datasets/acme/field/audio/{digest}", data)
        line = labelled_line(n, truths) if n < 2 else {"id": "bare"}
        items.append({**line, "audio": f"audio/{digest}"})
    del items[1]["caption"]  # partly labelled: the engine builds the caption from its segments
    job = submit_annotation(ctx, who, "field", items, label_map={"noise burst": "static"})
    assert annotate_job(ctx, job.id)
    result = ctx.store.get_job(job.id).result
    assert result["annotated"] == 3 and result["labels"]["label_map"] == 1
    manifest = ctx.storage.get_bytes(dataset_store.get_dataset(
        ctx.storage, "acme", result["captions"]["dataset"]).manifest).decode()  # fmt: skip
    lines = {x["id"]: x for x in map(json.loads, manifest.splitlines())}
    for item in items[:2]:
        out = lines[item["id"]]
        for key in LABELS:
            if key in item:
                assert out[key] == item[key] and out["provenance"][key] == "given", key
    assert lines["c1"]["provenance"]["caption"] == "derived:segments,events"
    assert_caption_follows(lines["c1"])
    bare = lines["bare"]
    assert bare["provenance"]["events"].startswith("annotator:")
    assert "noise burst" not in {e["label"] for e in bare.get("events", [])}
    with pytest.raises(ApiError) as refused:
        submit_annotation(ctx, who, "field", items, label_map={"low tone": ""})
    assert refused.value.code == "invalid_label_map"
    bad = [{**items[0], "events": [{"label": "x", "start": 2.0, "end": 1.0}]}]
    with pytest.raises(ApiError) as refused:
        submit_annotation(ctx, who, "field", bad)
    assert refused.value.code == "invalid_item" and "events[0].end" in refused.value.message


def test_the_pipeline_step_keeps_given_labels_and_takes_a_label_map(
    tmp_path, monkeypatch, clips
) -> None:
    from pipelines.components import annotate_step
    from services.core.settings import get_settings
    from services.core.storage import make_storage

    monkeypatch.setenv("MOSS_HOME", str(tmp_path))
    get_settings.cache_clear()
    try:
        storage = make_storage(get_settings())
        audio, truths = next(c for c in clips if any(t.branch == "general" for t in c[1]))
        storage.put_bytes("datasets/ops/field/0.wav", wav_bytes(audio))
        given = {**labelled_line(0, truths), "audio": "0.wav"}
        lines = [given, {"id": "bare", "audio": "0.wav"}]
        storage.put_bytes("datasets/ops/field/manifest.jsonl",
                          "".join(json.dumps(x) + "\n" for x in lines).encode())  # fmt: skip
        label_map = {"noise burst": "static", "low tone": "hum", "high tone": "whistle"}
        _, _, captions = annotate_step("datasets/ops/field/manifest.jsonl", json.dumps(NO_MODEL),
                                       "", json.dumps(label_map))  # fmt: skip
        out = {x["id"]: x for x in map(json.loads, storage.get_bytes(captions).splitlines())}
    finally:
        get_settings.cache_clear()
    assert all(out["c0"][k] == given[k] for k in LABELS if k in given)
    assert set(out["c0"]["provenance"].values()) == {"given"}
    sounds = {e["label"] for e in out["bare"]["events"]}
    assert sounds and not sounds & set(label_map) and out["bare"]["provenance"]["caption"]


def test_mossctl_annotate_sends_the_labels_and_refuses_a_bad_label_map(tmp_path) -> None:
    from typer.testing import CliRunner

    from services.cli import app
    from services.cli.annotate import _items

    line = {"id": "a", "audio": "a.wav", "split": "heldout", "caption": "A dog barks.",
            "events": [{"label": "bark", "start": 0.1, "end": 0.4}], "annotation": {}}  # fmt: skip
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(json.dumps(line) + "\n")
    _, items = _items(manifest)
    assert items == [{k: v for k, v in line.items() if k != "annotation"}]
    for body, message in (("[1, 2]", "a JSON object"), ('{"low tone": ""}', "1 to 256"),
                          ("{oops", "Expecting")):  # fmt: skip
        (tmp_path / "map.json").write_text(body)
        result = CliRunner().invoke(app, ["annotate", str(manifest), "--label-map",
                                          str(tmp_path / "map.json")])  # fmt: skip
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.stderr
