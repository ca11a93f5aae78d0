"""Audio loading: the audio containers of `audio_formats` to float32 mono 16 kHz, through PyAV
(FFmpeg's demuxers, decoders and libswresample), with every upload treated as hostile.

- The container is picked from the file's magic bytes and opened by name: FFmpeg never guesses,
  so its playlist and concat demuxers (which read other files) cannot be reached.
- Only whitelisted codecs are decoded; the sample rate (4 kHz .. 768 kHz) and the channel count
  (1 .. 64) are checked before the first packet is decoded.
- Decoding streams: each decoded block is resampled to 16 kHz and averaged over its channels
  right away (the official loader averages the channels too), so memory follows the mono output,
  and `max_seconds` stops a decompression bomb as soon as the output passes it.
- Resampling goes to a packed (interleaved) format: PyAV 18 crashes the process reading planar
  frames of 8 or more channels (shared/STACK_NOTES.md).

`probe_audio` is the cheap half the gateway needs: the header, the duration from the packet
timestamps (demuxed, not decoded) and a decoded prefix. Native crashes and memory or time
exhaustion inside FFmpeg cannot be caught in-process; `model.audio_sandbox` runs both functions
in a child process with limits, and is what the services use.

Bad input raises `AudioDecodeError` with a machine-readable `code`: `not_audio`, `empty_audio`,
`truncated_audio`, `unsupported_codec`, `unsupported_sample_rate`, `too_many_channels`,
`audio_too_long`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np

from .audio_formats import ACCEPTED, SAMPLE_RATE, codec_allowed, sniff_container

AudioSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO

MIN_SAMPLE_RATE = 4_000  # below this no real recording exists; 1 Hz WAVs are amplifiers
MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 64  # libswresample's limit (SWR_CH_MAX)
MIN_AUDIO_SECONDS = 0.1  # the shortest audio a job takes; shorter is 422 `audio_too_short`

# A stream that ends earlier than its declared duration by more than this share (or than the
# slack, for short clips: encoder delay, header rounding) was cut short.
_TRUNCATION_SHARE = 0.02
_TRUNCATION_SLACK_S = 0.15
_HEADER_BYTES = 65536  # also > the largest Ogg page (65,307 bytes)


class AudioDecodeError(ValueError):
    """The data could not be turned into audio. `code` says why, for APIs to pass on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class AudioInfo:
    container: str  # the FFmpeg demuxer that opened it
    codec: str
    channels: int
    sample_rate: int
    seconds: float  # from the packet timestamps, else the header


# --- opening ---------------------------------------------------------------------------------


def _check_wav_header(head: bytes, total_size: int) -> None:
    """WAV headers declare the data size; FFmpeg quietly decodes what is there, so compare.
    They declare the channel count too, which FFmpeg reports as 0 past what it can lay out."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return
    offset = 12
    while offset + 8 <= len(head):
        chunk, size = (
            head[offset : offset + 4],
            int.from_bytes(head[offset + 4 : offset + 8], "little"),
        )
        if chunk == b"fmt " and offset + 12 <= len(head):
            channels = int.from_bytes(head[offset + 10 : offset + 12], "little")
            if channels > MAX_CHANNELS:
                raise _too_many_channels(channels)
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


def _not_audio() -> AudioDecodeError:
    return AudioDecodeError(
        "not_audio",
        f"the data is not a recognised audio format ({ACCEPTED}), "
        "or it is cut short before its header ends",
    )


def _open(source: AudioSource) -> av.container.InputContainer:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if not data:
            raise AudioDecodeError("empty_audio", "the audio data is empty (0 bytes)")
        head, tail, size, target = data[:_HEADER_BYTES], data[-_HEADER_BYTES:], len(data), None
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
            tail = handle.read()
        data, target = None, str(path)
    else:  # a binary file object
        return _open(source.read())
    container_format = sniff_container(head)
    if container_format is None:
        raise _not_audio()
    _check_wav_header(head, size)
    _check_ogg_end(head, tail)
    try:
        return av.open(
            io.BytesIO(data) if target is None else target,
            mode="r",
            format=container_format,
            metadata_errors="ignore",
        )
    except av.error.FFmpegError as exc:
        raise _not_audio() from exc


def _too_many_channels(channels: int) -> AudioDecodeError:
    return AudioDecodeError(
        "too_many_channels", f"the audio has {channels} channels; at most {MAX_CHANNELS}"
    )


def _audio_stream(container: av.container.InputContainer) -> av.AudioStream:
    if not container.streams.audio:
        raise AudioDecodeError("not_audio", "the data has no audio stream")
    stream = container.streams.audio[0]
    if stream.codec_context is None:  # FFmpeg has no decoder for it (an unknown format tag)
        raise AudioDecodeError("unsupported_codec", "the audio codec is unknown")
    codec = stream.codec_context.name
    if not codec_allowed(codec):
        raise AudioDecodeError("unsupported_codec", f"audio codec {codec!r} is not accepted")
    rate = stream.codec_context.sample_rate or 0
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            "unsupported_sample_rate",
            f"the sample rate is {rate} Hz; accepted: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz",
        )
    channels = stream.codec_context.channels
    if channels < 1:
        raise AudioDecodeError("not_audio", "the audio declares no channels")
    if channels > MAX_CHANNELS:
        raise _too_many_channels(channels)
    return stream


def _declared_seconds(container: av.container.InputContainer, stream: av.AudioStream) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _not_finite() -> AudioDecodeError:
    return AudioDecodeError("not_audio", "the audio decodes to non-finite samples (NaN, inf)")


def _too_long(seconds: float, max_seconds: float) -> AudioDecodeError:
    return AudioDecodeError(
        "audio_too_long", f"the audio lasts {seconds:.1f} s; the limit is {max_seconds:g} s"
    )


def _check_declared(declared: float, found: float, what: str) -> None:
    if declared - found > max(_TRUNCATION_SLACK_S, _TRUNCATION_SHARE * declared):
        raise AudioDecodeError(
            "truncated_audio",
            f"the audio is truncated: {found:.2f} s {what} of {declared:.2f} s declared",
        )


# --- decoding --------------------------------------------------------------------------------


class _MonoDecoder:
    """Decoded frames -> 16 kHz mono float32 blocks, one resampler per input layout."""

    def __init__(self, sample_rate: int, max_samples: int | None) -> None:
        self.sample_rate = sample_rate
        self.max_samples = max_samples
        self.blocks: list[np.ndarray] = []
        self.samples = 0
        self._resampler: av.AudioResampler | None = None
        self._key: tuple | None = None

    def push(self, frame: av.AudioFrame) -> None:
        key = (frame.format.name, frame.layout.name, frame.layout.nb_channels, frame.rate)
        if key != self._key:  # chained streams may change layout mid-way
            self.flush()
            self._resampler = av.AudioResampler(
                format="flt", layout=frame.layout, rate=self.sample_rate
            )
            self._key = key
        self._emit(self._resampler.resample(frame))

    def flush(self) -> None:
        if self._resampler is not None:
            self._emit(self._resampler.resample(None))

    def _emit(self, frames: list[av.AudioFrame]) -> None:
        for out in frames:
            packed = out.to_ndarray()  # (1, samples * channels), interleaved
            mono = packed.reshape(-1, out.layout.nb_channels).mean(axis=1, dtype=np.float32)
            self.blocks.append(mono)
            self.samples += len(mono)
            if self.max_samples is not None and self.samples > self.max_samples:
                seconds = self.samples / self.sample_rate
                raise _too_long(seconds, self.max_samples / self.sample_rate)

    def seconds(self) -> float:
        return self.samples / self.sample_rate


def _decode(
    container: av.container.InputContainer,
    stream: av.AudioStream,
    decoder: _MonoDecoder,
    until_seconds: float | None = None,
) -> None:
    try:
        for frame in container.decode(stream):
            decoder.push(frame)
            if until_seconds is not None and decoder.seconds() >= until_seconds:
                return
        decoder.flush()
    except av.error.FFmpegError as exc:
        if isinstance(exc, MemoryError):  # ENOMEM: a memory limit, not bad data
            raise
        if not decoder.samples:
            raise AudioDecodeError(
                "not_audio", f"the audio stream cannot be decoded: {exc}"
            ) from exc
        raise AudioDecodeError(
            "truncated_audio", f"the audio stream breaks off after {decoder.seconds():.2f} s"
        ) from exc


def load_audio(
    source: AudioSource, sample_rate: int = SAMPLE_RATE, *, max_seconds: float | None = None
) -> np.ndarray:
    """Decode `source` (bytes, a path or a binary file object) to (samples,) float32 mono.

    `max_seconds` caps the decoded duration: decoding stops with `audio_too_long` as soon as
    the output passes it, whatever the header said.
    """
    max_samples = None if max_seconds is None else int(max_seconds * sample_rate)
    with _open(source) as container:
        stream = _audio_stream(container)
        declared = _declared_seconds(container, stream)
        if max_seconds is not None and declared > max_seconds:
            raise _too_long(declared, max_seconds)
        decoder = _MonoDecoder(sample_rate, max_samples)
        _decode(container, stream, decoder)
    if not decoder.samples:
        raise AudioDecodeError("empty_audio", "the audio stream has no samples")
    audio = np.concatenate(decoder.blocks)
    _check_declared(declared, decoder.seconds(), "decoded")
    if not np.isfinite(audio).all():
        raise _not_finite()
    return audio


def probe_audio(
    source: AudioSource, *, max_seconds: float | None = None, probe_seconds: float = 1.0
) -> AudioInfo:
    """What the gateway needs to accept an upload, without decoding all of it.

    Reads the header, measures the duration from the packet timestamps (a demux pass: no
    decoding), checks it against `max_seconds` and the declared duration, then decodes the first
    `probe_seconds` to make sure the stream really decodes: from a second, fresh demuxer, as
    seeking back to the start fails on some damaged files (FFmpeg's EPERM, a PermissionError).
    """
    if not isinstance(source, bytes | bytearray | memoryview | str | os.PathLike):
        source = source.read()  # a file object: read once, opened twice
    with _open(source) as container:
        stream = _audio_stream(container)
        declared = _declared_seconds(container, stream)
        if max_seconds is not None and declared > max_seconds:
            raise _too_long(declared, max_seconds)
        end = 0.0
        try:
            for packet in container.demux(stream):
                if packet.pts is not None and packet.duration:
                    end = max(end, float((packet.pts + packet.duration) * packet.time_base))
        except av.error.FFmpegError as exc:
            raise AudioDecodeError("truncated_audio", f"the container breaks off: {exc}") from exc
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        seconds = max(0.0, end - start) if end else declared
        if max_seconds is not None and seconds > max_seconds:
            raise _too_long(seconds, max_seconds)
        if seconds == 0.0 and declared == 0.0:
            raise AudioDecodeError("empty_audio", "the audio stream has no samples")
        _check_declared(declared, seconds, "present")
    with _open(source) as container:
        stream = _audio_stream(container)
        decoder = _MonoDecoder(SAMPLE_RATE, None)
        _decode(container, stream, decoder, until_seconds=probe_seconds)
        if not decoder.samples:
            raise AudioDecodeError("empty_audio", "the audio stream has no samples")
        if not all(np.isfinite(block).all() for block in decoder.blocks):
            raise _not_finite()
        return AudioInfo(
            container=container.format.name,
            codec=stream.codec_context.name,
            channels=stream.codec_context.channels,
            sample_rate=stream.codec_context.sample_rate,
            seconds=seconds,
        )
