"""The dataset format (services/core/dataset.schema.json): what passes, what each bad line
says, that one bad line never stops the others; and `mossctl datasets validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from services.core.datasets import check_manifest, schema

MOSSCTL = str(Path(sys.executable).with_name("mossctl"))
GOOD = [
    {"audio": "a.wav", "transcript": "hello there", "language": "en", "split": "heldout"},
    {"audio": "b.wav", "segments": [{"start": 0.0, "end": 1.2, "text": "hello"}], "duration": 2},
    {"audio": "c.wav", "events": [{"label": "dog bark", "start": 0.5, "end": 0.9}]},
    {"audio": "d.wav", "caption": "Rain on a tin roof."},
    {"id": "e", "audio": "e.wav", "instructions": [{"prompt": "Who speaks?", "answer": "Ann"}]},
]


def lines(*clips) -> list[str]:
    return [json.dumps(c) if isinstance(c, dict) else c for c in clips]


def test_every_label_family_passes_and_gets_an_id_and_a_split() -> None:
    checked = check_manifest(lines(*GOOD))
    assert not checked.problems and checked.lines == 5
    assert [c["id"] for c in checked.clips] == ["1", "2", "3", "4", "e"]
    assert [c["split"] for c in checked.clips] == ["heldout", "train", "train", "train", "train"]


def test_bad_lines_name_their_line_and_field_and_the_rest_pass() -> None:
    bad = lines(
        GOOD[0],
        "{not json",
        {"audio": "x.wav"},  # no label
        {"audio": "y.wav", "caption": "ok", "colour": "red"},
        {"audio": "z.wav", "segments": [{"start": 2.0, "end": 1.0, "text": "hi"}]},
        {"audio": "w.wav", "events": [{"label": "x", "start": 0, "end": 9}], "duration": 3.0},
        {"audio": "v.wav", "split": "dev", "caption": "c"},
        {"audio": "u.wav", "segments": [{"start": 0, "text": "no end"}]},
        {"id": "1", "audio": "t.wav", "caption": "same id as line 1"},
        GOOD[3],
    )
    checked = check_manifest(bad)
    found = {(p.line, p.field): p.message for p in checked.problems}
    assert found[(2, "")].startswith("not JSON")
    assert "no label" in found[(3, "")]
    assert "colour" in found[(4, "")]
    assert found[(5, "segments[0].end")] == "ends before it starts"
    assert "past the clip's end" in found[(6, "events[0].end")]
    assert "'dev' is not one of" in found[(7, "split")]
    assert "'end' is a required property" in found[(8, "segments[0]")]
    assert found[(9, "id")] == "repeats the id of line 1"
    assert checked.bad_lines == 8 and [c["audio"] for c in checked.clips] == ["a.wav", "d.wav"]
    assert "line 5, field segments[0].end: ends before it starts" in map(str, checked.problems)


def test_the_schema_is_valid_json_schema() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(schema())


def test_the_cli_reports_problems_and_exits_1_and_passes_a_good_manifest(tmp_path) -> None:
    for clip in GOOD:
        (tmp_path / clip["audio"]).write_bytes(b"RIFF")
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(lines(*GOOD)) + "\n")
    ran = subprocess.run([MOSSCTL, "datasets", "validate", str(good)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "5 of 5 clips are valid (1 heldout, 4 train)" in ran.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join(lines(GOOD[0], {"audio": "missing.wav", "caption": "c"})))
    ran = subprocess.run([MOSSCTL, "datasets", "validate", str(bad)], capture_output=True,
                         text=True, timeout=60)  # fmt: skip
    assert ran.returncode == 1
    assert "line 2, field audio: no such audio: missing.wav" in ran.stderr
    assert "1 of 2 clips are valid" in ran.stdout
    missing = subprocess.run([MOSSCTL, "datasets", "validate", str(tmp_path / "nope.jsonl")],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert missing.returncode == 2 and "no such manifest" in missing.stderr


def test_the_generated_bootstrap_dataset_is_in_the_format(tmp_path) -> None:
    from pipelines.data import generate_dataset
    from services.core.storage import LocalStorage

    storage = LocalStorage(tmp_path)
    key, _ = generate_dataset(storage, "t", 20)
    checked = check_manifest(storage.get_bytes(key).decode().splitlines())
    assert not checked.problems and len(checked.clips) == 20


def test_the_upstream_fine_tuning_format_is_accepted_as_an_instruction_pair() -> None:
    def upstream(*turns):
        keys = ("role", "message_type", "content")
        return {"conversation": [dict(zip(keys, t, strict=True)) for t in turns]}

    good = upstream(("user", "audio", "clips/a.wav"), ("user", "text", "Transcribe the audio."),
                    ("assistant", "text", "Hello world."))  # fmt: skip
    no_prompt = upstream(("user", "audio", "clips/b.wav"), ("assistant", "text", "Hi."))
    no_audio = upstream(("user", "text", "Hi?"), ("assistant", "text", "Hi."))
    checked = check_manifest(lines(good, no_prompt, no_audio))
    assert checked.clips == [{
        "audio": "clips/a.wav", "id": "1", "split": "train",
        "instructions": [{"prompt": "Transcribe the audio.", "answer": "Hello world."}],
    }]  # fmt: skip
    found = {(p.line, p.field): p.message for p in checked.problems}
    assert "no user text" in found[(2, "conversation")]
    assert "exactly one audio message" in found[(3, "conversation")]
    defaulted = check_manifest(lines(no_prompt), default_prompt="Describe the audio.")
    assert defaulted.clips[0]["instructions"][0]["prompt"] == "Describe the audio."
