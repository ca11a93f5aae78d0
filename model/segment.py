"""Long audio: split at low-energy points into contiguous segments no longer than a maximum.

The encoder has no length limit (it works in independent 4 s windows) and the decoder's context
holds about 50 minutes of audio, so only transcription is split (model.tasks): a transcript is
long output, and segments give each part its own token budget and run in parallel. Each segment
is processed on its own and merged back with its time offset. Cuts are placed at the quietest
10 ms block in the last `search_seconds` before the limit, so words and notes are rarely split.
Segments are contiguous and cover every sample exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .audio_formats import SAMPLE_RATE

DEFAULT_MAX_SEGMENT_SECONDS = 120.0


@dataclass(frozen=True)
class Segment:
    start: int  # first sample (inclusive)
    end: int  # last sample (exclusive)
    audio: np.ndarray  # view of the source samples [start:end]
    sample_rate: int = SAMPLE_RATE

    @property
    def offset_seconds(self) -> float:
        return self.start / self.sample_rate

    @property
    def duration_seconds(self) -> float:
        return (self.end - self.start) / self.sample_rate


def split_audio(
    audio: np.ndarray,
    max_seconds: float = DEFAULT_MAX_SEGMENT_SECONDS,
    sample_rate: int = SAMPLE_RATE,
    search_seconds: float | None = None,
) -> list[Segment]:
    """(samples,) -> segments of at most `max_seconds`, cut at the quietest nearby point."""
    if max_seconds <= 0:
        raise ValueError("max_seconds must be positive")
    limit = int(max_seconds * sample_rate)
    total = len(audio)
    if total <= limit:
        return [Segment(0, total, audio, sample_rate)]
    search = search_seconds if search_seconds is not None else min(10.0, max_seconds / 4)
    window = max(1, int(search * sample_rate))
    block = max(1, sample_rate // 100)

    # Energy per 10 ms block, smoothed over 30 ms so a single click does not look like speech.
    usable = total - total % block
    energy = np.square(audio[:usable].astype(np.float64)).reshape(-1, block).mean(axis=1)
    if len(energy) >= 3:
        energy = np.convolve(energy, np.ones(3) / 3, mode="same")

    segments: list[Segment] = []
    start = 0
    while total - start > limit:
        hard = start + limit
        lo_block = -(-max(start + block, hard - window) // block)  # first block in the window
        hi_block = min(hard // block, len(energy))  # blocks that end at or before the limit
        if hi_block > lo_block:
            quietest = lo_block + int(np.argmin(energy[lo_block:hi_block]))
            cut = quietest * block + block // 2  # the middle of the quietest block
        else:
            cut = hard
        cut = min(max(cut, start + 1), hard)
        segments.append(Segment(start, cut, audio[start:cut], sample_rate))
        start = cut
    segments.append(Segment(start, total, audio[start:], sample_rate))
    return segments
