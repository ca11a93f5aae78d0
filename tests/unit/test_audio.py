"""Audio decoding for every accepted container, and clear errors for bad data."""

from __future__ import annotations

import io
import os
import wave

import numpy as np
import pytest

from model import AudioDecodeError, load_audio
from tests.audio_files import FORMATS, encode, stereo_tone


def dominant_frequency(audio: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.argmax(spectrum) * rate / len(audio))


@pytest.fixture(scope="module")
def encoded() -> dict[str, bytes]:
    left, right = stereo_tone(1.5)
    return {name: encode(left, right, 44_100, name) for name in FORMATS}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_format_decodes_to_16k_mono(encoded, name, tmp_path) -> None:
    data = encoded[name]
    for source in (data, _write(tmp_path / f"clip.{name}", data)):
        audio = load_audio(source)
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) / 16_000 - 1.5) < 0.06  # codecs add a little priming/padding
        assert abs(dominant_frequency(audio) - 440.0) < 3.0
        # Stereo is averaged: channels of amplitude 0.4 and 0.2 give a 0.3 sine (RMS 0.212).
        rms = float(np.sqrt(np.mean(audio[2000:-2000] ** 2)))
        assert rms == pytest.approx(0.3 / np.sqrt(2), rel=0.06)


def test_file_object_source(encoded, tmp_path) -> None:
    path = _write(tmp_path / "clip.flac", encoded["flac"])
    with path.open("rb") as handle:
        assert len(load_audio(handle)) == 24_000


@pytest.mark.parametrize(
    "data", [os.urandom(4096), b"this is a text file, not audio\n" * 50, b"RIFF\x00\x00"]
)
def test_garbage_is_not_audio(data: bytes) -> None:
    with pytest.raises(AudioDecodeError) as info:
        load_audio(data)
    assert info.value.code == "not_audio"
    assert "not a recognised audio format" in str(info.value)


def test_empty_data_and_files(tmp_path) -> None:
    with pytest.raises(AudioDecodeError) as info:
        load_audio(b"")
    assert info.value.code == "empty_audio"
    with pytest.raises(AudioDecodeError) as info:
        load_audio(_write(tmp_path / "empty.wav", b""))
    assert info.value.code == "empty_audio"


def test_wav_without_samples_is_empty() -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
    with pytest.raises(AudioDecodeError) as info:
        load_audio(buffer.getvalue())
    assert info.value.code == "empty_audio"


@pytest.mark.parametrize("name", ["wav", "flac", "ogg", "opus", "mp3", "webm"])
def test_truncated_files_are_reported(name: str) -> None:
    left, right = stereo_tone(3.0)
    data = encode(left, right, 44_100, name)
    with pytest.raises(AudioDecodeError) as info:
        load_audio(data[: int(len(data) * 0.8)])
    assert info.value.code == "truncated_audio"


def test_truncated_m4a_is_rejected() -> None:
    # An MP4 written without "faststart" keeps its index at the end: cut, it cannot be opened.
    left, right = stereo_tone(3.0)
    data = encode(left, right, 44_100, "m4a")
    with pytest.raises(AudioDecodeError) as info:
        load_audio(data[: len(data) // 2])
    assert info.value.code in {"not_audio", "truncated_audio"}


def test_missing_path_is_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        load_audio(tmp_path / "nope.wav")


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
