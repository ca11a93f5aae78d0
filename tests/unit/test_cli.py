"""`mossctl infer`: a real local inference from a checkpoint directory, and one-line errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from services.cli import app
from tests.audio_files import encode, stereo_tone
from tests.conftest import make_tiny_model

runner = CliRunner()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, processor):
    directory = tmp_path_factory.mktemp("ckpt")
    make_tiny_model(seed=5).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "clip.mp3"
    path.write_bytes(encode(*stereo_tone(3.0), 44_100, "mp3"))
    return path


def test_infer_from_checkpoint_directory(checkpoint, clip) -> None:
    args = ["infer", str(clip), "--model", str(checkpoint), "--max-new-tokens", "6", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["segments"][0]["duration_seconds"] == pytest.approx(3.0, abs=0.05)
    assert 1 <= payload["segments"][0]["num_tokens"] <= 6
    # Same checkpoint, same audio, greedy: the answer is deterministic.
    again = json.loads(runner.invoke(app, args).stdout)
    assert again["text"] == payload["text"]


def test_long_audio_is_split_into_segments(checkpoint, tmp_path) -> None:
    path = tmp_path / "long.flac"
    path.write_bytes(encode(*stereo_tone(7.0), 44_100, "flac"))
    args = [
        "infer",
        str(path),
        "--model",
        str(checkpoint),
        "--max-new-tokens",
        "3",
        "--json",
        "--max-segment-seconds",
        "3",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    offsets = [s["offset_seconds"] for s in json.loads(result.stdout)["segments"]]
    assert len(offsets) == 3 and offsets[0] == 0.0 and offsets == sorted(offsets)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["infer", "/no/such.wav", "--preset", "tiny"], "no such audio file"),
        (["infer", "{junk}", "--preset", "tiny"], "not a recognised audio format"),
        (["infer", "{clip}", "--model", "/tmp"], "not a checkpoint directory"),
        (["infer", "{clip}", "--preset", "huge"], "unknown preset"),
        (["infer", "{clip}"], "exactly one of --model DIR or --preset NAME"),
    ],
)
def test_errors_are_one_line_and_non_zero(args, message, clip, tmp_path) -> None:
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00\x01garbage" * 300)
    args = [a.format(junk=junk, clip=clip) for a in args]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]
