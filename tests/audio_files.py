"""Write real audio files in every container the platform accepts, with PyAV's encoders."""

from __future__ import annotations

import io

import av
import numpy as np

# name -> (container format, codec, sample rate)
FORMATS: dict[str, tuple[str, str, int]] = {
    "wav": ("wav", "pcm_s16le", 44_100),
    "flac": ("flac", "flac", 44_100),
    "ogg": ("ogg", "libopus", 48_000),
    "opus": ("opus", "libopus", 48_000),
    "mp3": ("mp3", "libmp3lame", 44_100),
    "m4a": ("ipod", "aac", 44_100),
    "webm": ("webm", "libopus", 48_000),
}


def encode(left: np.ndarray, right: np.ndarray, rate: int, name: str) -> bytes:
    """Encode a stereo float32 signal sampled at `rate` into the format `name`."""
    container_format, codec, codec_rate = FORMATS[name]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container_format) as out:
        stream = out.add_stream(codec, rate=codec_rate, layout="stereo")
        ctx = stream.codec_context
        frame = av.AudioFrame.from_ndarray(
            np.stack([left, right]).astype(np.float32), format="fltp", layout="stereo"
        )
        frame.rate = rate
        resampler = av.AudioResampler(
            format=ctx.format.name,
            layout="stereo",
            rate=codec_rate,
            frame_size=ctx.frame_size or None,
        )
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(chunk):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def stereo_tone(
    seconds: float, rate: int = 44_100, freq: float = 440.0
) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(seconds * rate)) / rate
    left = 0.4 * np.sin(2 * np.pi * freq * t)
    right = 0.2 * np.sin(2 * np.pi * freq * t)
    return left.astype(np.float32), right.astype(np.float32)
