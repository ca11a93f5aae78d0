"""Audio loading: any container FFmpeg reads (wav, flac, ogg/opus, mp3, m4a/aac, webm, ...) to
float32 mono 16 kHz, through PyAV (FFmpeg's demuxers, decoders and libswresample).

Channels are averaged before resampling, so a stereo file gives the mean of its channels.
Bad input raises `AudioDecodeError` with a machine-readable `code`:
`not_audio` (no audio stream / not a media file), `empty_audio` (no samples),
`truncated_audio` (the stream ends early or breaks off mid-packet).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from .features import SAMPLE_RATE

AudioSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

# A stream that decodes to less than this share of its declared duration was cut short.
_TRUNCATION_RATIO = 0.9
# ...unless the shortfall is tiny (encoder delay, rounding in the header).
_TRUNCATION_SLACK_S = 0.1


class AudioDecodeError(ValueError):
    """The data could not be turned into audio. `code` says why, for APIs to pass on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _open(source: AudioSource) -> av.container.InputContainer:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise AudioDecodeError("empty_audio", "the audio data is empty (0 bytes)")
        source = io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such audio file: {path}")
        if path.stat().st_size == 0:
            raise AudioDecodeError("empty_audio", f"{path} is empty (0 bytes)")
        source = str(path)
    try:
        return av.open(source, mode="r", metadata_errors="ignore")
    except (av.error.InvalidDataError, av.error.ValueError, av.error.EOFError) as exc:
        raise AudioDecodeError(
            "not_audio", "the data is not a recognised audio format (wav, flac, ogg, mp3, m4a...)"
        ) from exc


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def load_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode `source` (bytes, a path or a binary file object) to (samples,) float32 mono."""
    with _open(source) as container:
        if not container.streams.audio:
            raise AudioDecodeError("not_audio", "the data has no audio stream")
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))  # (channels, n) -> (n,)
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().mean(axis=0))
        except (av.error.InvalidDataError, av.error.EOFError, av.error.ValueError) as exc:
            if not chunks:
                raise AudioDecodeError(
                    "not_audio", f"the audio stream cannot be decoded: {exc}"
                ) from exc
            raise AudioDecodeError(
                "truncated_audio",
                f"the audio stream breaks off after {_seconds(chunks, sample_rate):.2f} s",
            ) from exc
        declared = _declared_seconds(container, stream)

    if not chunks or sum(len(c) for c in chunks) == 0:
        raise AudioDecodeError("empty_audio", "the audio stream has no samples")
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    decoded = len(audio) / sample_rate
    if declared - decoded > _TRUNCATION_SLACK_S and decoded < _TRUNCATION_RATIO * declared:
        raise AudioDecodeError(
            "truncated_audio",
            f"the audio is truncated: {decoded:.2f} s decoded of {declared:.2f} s declared",
        )
    if not np.isfinite(audio).all():
        raise AudioDecodeError("not_audio", "the audio decodes to non-finite samples")
    return audio


def _seconds(chunks: list[np.ndarray], sample_rate: int) -> float:
    return sum(len(c) for c in chunks) / sample_rate
