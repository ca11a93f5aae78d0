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

# A stream that decodes to less than its declared duration by more than this share (or than
# the slack, for short clips: encoder delay, header rounding) was cut short.
_TRUNCATION_SHARE = 0.02
_TRUNCATION_SLACK_S = 0.15
_HEADER_BYTES = 65536  # also > the largest Ogg page (65,307 bytes)


class AudioDecodeError(ValueError):
    """The data could not be turned into audio. `code` says why, for APIs to pass on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _check_wav_size(head: bytes, total_size: int) -> None:
    """WAV headers declare the data size; FFmpeg quietly decodes what is there, so compare."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(head):
        chunk, size = (
            head[offset : offset + 4],
            int.from_bytes(head[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"data":
            available = total_size - (offset + 8)
            if size not in (0, 0xFFFFFFFF) and available < size:  # 0 / -1: streamed, size unknown
                raise AudioDecodeError(
                    "truncated_audio",
                    f"the WAV file is truncated: {available} of {size} data bytes present",
                )
            return
        offset += 8 + size + (size & 1)


def _check_ogg_end(head: bytes, tail: bytes) -> None:
    """A complete Ogg stream ends with a whole page flagged end-of-stream; a cut one does not."""
    if head[:4] != b"OggS":
        return
    start = tail.rfind(b"OggS")
    page = tail[start:]
    if start < 0 or len(page) < 27 or len(page) < 27 + page[26]:
        raise AudioDecodeError("truncated_audio", "the Ogg stream is truncated mid-page")
    body = 27 + page[26] + sum(page[27 : 27 + page[26]])
    if len(page) < body or not page[5] & 0x04:
        raise AudioDecodeError("truncated_audio", "the Ogg stream is truncated (no final page)")


def _check_complete(head: bytes, tail: bytes, total_size: int) -> None:
    _check_wav_size(head, total_size)
    _check_ogg_end(head, tail)


def _open(source: AudioSource) -> av.container.InputContainer:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise AudioDecodeError("empty_audio", "the audio data is empty (0 bytes)")
        _check_complete(bytes(source[:_HEADER_BYTES]), bytes(source[-_HEADER_BYTES:]), len(source))
        source = io.BytesIO(bytes(source))
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"no such audio file: {path}")
        size = path.stat().st_size
        if size == 0:
            raise AudioDecodeError("empty_audio", f"{path} is empty (0 bytes)")
        with path.open("rb") as handle:
            head = handle.read(_HEADER_BYTES)
            handle.seek(max(0, size - _HEADER_BYTES))
            _check_complete(head, handle.read(), size)
        source = str(path)
    try:
        return av.open(source, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(
            "not_audio",
            "the data is not a recognised audio format (wav, flac, ogg, opus, mp3, m4a, webm), "
            "or it is cut short before its header ends",
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
        except av.error.FFmpegError as exc:
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
    if declared - decoded > max(_TRUNCATION_SLACK_S, _TRUNCATION_SHARE * declared):
        raise AudioDecodeError(
            "truncated_audio",
            f"the audio is truncated: {decoded:.2f} s decoded of {declared:.2f} s declared",
        )
    if not np.isfinite(audio).all():
        raise AudioDecodeError("not_audio", "the audio decodes to non-finite samples")
    return audio


def _seconds(chunks: list[np.ndarray], sample_rate: int) -> float:
    return sum(len(c) for c in chunks) / sample_rate
