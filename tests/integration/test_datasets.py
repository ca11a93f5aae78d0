"""`mossctl datasets validate|upload|list|delete` as a team runs them, against the real
local stack (gateway process, object store): a folder of audio and a manifest go up once, a
re-upload sends nothing twice, and a bad line is reported without stopping the rest."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.data import SAMPLE_RATE, wav_bytes

pytestmark = pytest.mark.integration
MOSSCTL = str(Path(sys.executable).with_name("mossctl"))


def mossctl(stack, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MOSS_URL": stack.url, "MOSS_API_KEY": stack.api_key}
    return subprocess.run([MOSSCTL, *args], env=env, capture_output=True, text=True, timeout=120)


def team_folder(root: Path) -> Path:
    (root / "clips").mkdir(parents=True)
    lines = []
    for i, hz in enumerate((220, 440, 880)):
        t = np.arange(SAMPLE_RATE * 2) / SAMPLE_RATE
        (root / "clips" / f"{i}.wav").write_bytes(wav_bytes(0.3 * np.sin(2 * np.pi * hz * t)))
        lines.append({"id": f"c{i}", "audio": f"clips/{i}.wav", "caption": f"A {hz} Hz tone.",
                      "events": [{"label": "tone", "start": 0.2, "end": 1.8}]})  # fmt: skip
    lines.append({"id": "typo", "audio": "clips/0.wav", "captoin": "misspelt"})
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    return manifest


def test_validate_upload_reupload_list_delete(stack, tmp_path) -> None:
    manifest = team_folder(tmp_path / "team")
    checked = mossctl(stack, "datasets", "validate", str(manifest))
    assert checked.returncode == 1
    assert "line 4: unknown field(s) ('captoin' was unexpected)" in checked.stderr
    assert "3 of 4 clips are valid (3 train)" in checked.stdout

    strict = mossctl(stack, "datasets", "upload", str(manifest), "--name", "tones", "--strict")
    assert strict.returncode == 1 and "nothing uploaded" in strict.stderr  # bad lines: 1
    first = mossctl(stack, "datasets", "upload", str(manifest), "--name", "tones")
    assert first.returncode == 1, first.stderr  # committed, and the bad line reported
    assert "dataset tones: 3 clips (caption, events), 3 audio file(s) sent" in first.stdout
    again = mossctl(stack, "datasets", "upload", str(manifest), "--name", "tones")
    assert "0 audio file(s) sent, 3 already there" in again.stdout
    digest = next(line.split()[1] for line in first.stdout.splitlines()
                  if line.startswith("digest "))  # fmt: skip
    assert digest in again.stdout  # the same lines: the same dataset identity

    listed = mossctl(stack, "datasets", "list")
    assert listed.returncode == 0 and "tones" in listed.stdout and digest[:12] in listed.stdout
    assert mossctl(stack, "datasets", "delete", "tones").returncode == 0
    gone = mossctl(stack, "datasets", "delete", "tones")
    assert gone.returncode == 2 and "no dataset 'tones'" in gone.stderr


def test_annotate_a_folder_into_captions_and_sft_manifests(stack, api, tmp_path) -> None:
    from tests.annotation_clips import clip_set

    folder = tmp_path / "field-recordings"
    folder.mkdir()
    for n, (audio, _) in enumerate(clip_set(seed=5, count=3)):
        (folder / f"clip{n}.wav").write_bytes(wav_bytes(audio))
    (folder / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt truncated")
    out = tmp_path / "out"
    done = mossctl(stack, "annotate", str(folder), "--out", str(out))
    assert done.returncode == 1, done.stderr  # one item failed; the rest are annotated
    assert "annotated 3 of 4 clips (1 failed)" in done.stdout
    assert "broken.wav" in done.stderr
    captions = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().splitlines()]
    assert len(captions) == len(sft) == 3
    for line in captions:
        assert " s: " in line["caption"] and line["annotation"]["segments"]
        assert line["audio"].startswith("datasets/") and "/field-recordings/audio/" in line["audio"]
    tasks = {e["task"] for line in sft for e in line["examples"]}
    assert {"caption", "ask"} <= tasks
    listed = json.loads(mossctl(stack, "datasets", "list", "--json").stdout)
    names = {d["name"]: d for d in listed}
    assert names["field-recordings-sft"]["clips"] == 3
    assert "field-recordings-captions" in names
    jobs = api.get("/v1/jobs").json()["jobs"]
    job = next(j for j in jobs if j["task"] == "annotate")
    assert job["status"] == "succeeded" and job["result"]["failed"] == 1
    assert job["result"]["failures"][0]["id"] == "broken.wav"
    assert job["timings"]["annotate"]["seconds"] > 0
