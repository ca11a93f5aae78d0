"""Cutting a clip at coherent event boundaries, never through a word, a note or a sound.

1. Events. Speech comes from voice activity (silero-vad; its model ships in the wheel). Other
   sounds come from signal features: frames louder than the clip's noise floor form active
   regions (short gaps inside a click train or a melody are closed), and a region is split
   where an onset coincides with a change of spectrum (two different sounds back to back).
   Speech and the active regions it overlaps merge into one event, so a sentence's quiet
   consonants are never cut off.
2. Boundaries. Between two events, the boundary is the quietest frame of the gap between them;
   between two sounds back to back, it is the change point. No boundary is inside an event.
3. Segments. The boundaries cut the whole clip, so every sample belongs to exactly one segment.
   A segment shorter than `min_seconds` joins its neighbour across the shorter gap; an event
   longer than `max_seconds` is cut at its quietest frames (the only cuts inside an event, and
   only when it is longer than any segment may be).
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from functools import cache

import numpy as np

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms frames
_VAD_LOCK = threading.Lock()  # the TorchScript VAD keeps state between calls


@dataclass(frozen=True)
class Region:
    start: int  # samples
    end: int
    speech: bool

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / SAMPLE_RATE, self.end / SAMPLE_RATE


@dataclass
class Segment:
    start: int  # samples, inclusive
    end: int  # samples, exclusive
    events: list[Region] = field(default_factory=list)

    @property
    def seconds(self) -> tuple[float, float]:
        return self.start / SAMPLE_RATE, self.end / SAMPLE_RATE


@dataclass(frozen=True)
class SegmentationConfig:
    min_seconds: float = 0.5
    max_seconds: float = 30.0
    floor_margin_db: float = 12.0  # active: this far above the noise floor
    close_gap_s: float = 0.15  # gaps shorter than this stay inside one sound
    min_event_s: float = 0.05
    change_threshold: float = 1.5  # flatness change (decades) that splits a region


@cache
def _vad():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_regions(audio: np.ndarray) -> list[tuple[int, int]]:
    """Voice activity in samples (silero-vad, 16 kHz)."""
    import torch
    from silero_vad import get_speech_timestamps

    if len(audio) < 512:
        return []
    with _VAD_LOCK, torch.inference_mode():
        found = get_speech_timestamps(
            torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), _vad(),
            sampling_rate=SAMPLE_RATE, min_silence_duration_ms=150, speech_pad_ms=30,
        )  # fmt: skip
    return [(int(r["start"]), int(r["end"])) for r in found]


def frame_db(audio: np.ndarray) -> np.ndarray:
    """RMS level of each 10 ms frame, in dB."""
    frames = len(audio) // HOP
    power = (audio[: frames * HOP].reshape(frames, HOP).astype(np.float64) ** 2).mean(axis=1)
    return 10 * np.log10(power + 1e-12)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def active_regions(db: np.ndarray, config: SegmentationConfig) -> list[tuple[int, int]]:
    """Runs of frames above the noise floor (frame indices), short gaps closed."""
    if not db.size:
        return []
    floor, peak = np.percentile(db, 10), np.percentile(db, 99.5)
    threshold = floor + max(config.floor_margin_db, 0.2 * (peak - floor))
    runs = _runs(db > threshold)
    closed: list[list[int]] = []
    for start, end in runs:
        if closed and (start - closed[-1][1]) * HOP / SAMPLE_RATE < config.close_gap_s:
            closed[-1][1] = end
        else:
            closed.append([start, end])
    shortest = config.min_event_s * SAMPLE_RATE / HOP
    return [(s, e) for s, e in closed if e - s >= shortest]


def change_points(audio: np.ndarray, start: int, end: int, config: SegmentationConfig) -> list[int]:
    """Frames inside [start, end) where one kind of sound gives way to another: an onset where
    the spectral flatness of the 0.2 s after it differs from that of the 0.2 s before by more
    than `change_threshold` decades (a tone into noise, noise into a tone). A melody's notes
    differ in pitch, not in kind, so a melody stays one event."""
    import librosa

    piece = audio[start * HOP : end * HOP]
    if end - start < 40:  # under 0.4 s: too short to hold two sounds worth telling apart
        return []
    onsets = librosa.onset.onset_detect(y=piece, sr=SAMPLE_RATE, hop_length=HOP, backtrack=True)
    flatness = np.log10(librosa.feature.spectral_flatness(y=piece, n_fft=512, hop_length=HOP)[0]
                        + 1e-6)  # fmt: skip
    found: list[int] = []
    for onset in onsets:
        if onset < 20 or onset > len(flatness) - 20:
            continue
        change = abs(
            np.median(flatness[onset : onset + 20]) - np.median(flatness[onset - 20 : onset])
        )
        if change > config.change_threshold and (not found or onset - found[-1] >= 20):
            found.append(int(onset))
    return [start + f for f in found]


def find_events(audio: np.ndarray, config: SegmentationConfig) -> list[Region]:
    """The clip's events in time order, none overlapping (samples)."""
    db = frame_db(audio)
    speech = [(s // HOP, -(-e // HOP)) for s, e in speech_regions(audio)]
    spans = [(s, e, True) for s, e in speech]
    for s, e in active_regions(db, config):
        cuts = [s, *change_points(audio, s, e, config), e]
        spans += [(a, b, False) for a, b in itertools.pairwise(cuts)]
    spans.sort()
    merged: list[list] = []
    for s, e, is_speech in spans:  # speech absorbs the active regions it overlaps
        if merged and s < merged[-1][1] and (is_speech or merged[-1][2]):
            merged[-1][1] = max(merged[-1][1], e)
            merged[-1][2] = merged[-1][2] or is_speech
        elif merged and s < merged[-1][1]:  # two non-speech parts overlap: keep the cut
            s = merged[-1][1]
            if s < e:
                merged.append([s, e, False])
        else:
            merged.append([s, e, is_speech])
    frames = len(db)
    return [Region(s * HOP, min(e, frames) * HOP, bool(sp)) for s, e, sp in merged if e > s]


def _quietest(db: np.ndarray, first: int, last: int) -> int:
    """The quietest frame in [first, last] (its middle when several tie)."""
    if last <= first:
        return first
    window = db[first : last + 1]
    quiet = np.flatnonzero(window <= window.min() + 1.0)
    return first + int(quiet[len(quiet) // 2])


def segment(audio: np.ndarray, config: SegmentationConfig | None = None) -> list[Segment]:
    """Segments that cover the clip exactly, cut between events."""
    config = config or SegmentationConfig()
    n = len(audio)
    if n == 0:
        return []
    db = frame_db(audio)
    events = find_events(audio, config)
    cuts = [0]
    for left, right in itertools.pairwise(events):
        if right.start <= left.end:  # back to back: the change point itself
            cuts.append(right.start)
        else:
            cuts.append(_quietest(db, left.end // HOP, right.start // HOP - 1) * HOP)
    cuts.append(n)
    segments = [Segment(a, b) for a, b in itertools.pairwise(cuts) if b > a]
    for event in events:
        middle = (event.start + event.end) // 2
        next(s for s in segments if s.start <= middle < s.end).events.append(event)
    segments = _join_short(segments, config.min_seconds * SAMPLE_RATE)
    return [piece for s in segments for piece in _split_long(s, db, config)]


def _join_short(segments: list[Segment], shortest: float) -> list[Segment]:
    out = list(segments)
    while len(out) > 1:
        lengths = [s.end - s.start for s in out]
        i = int(np.argmin(lengths))
        if lengths[i] >= shortest:
            break
        if i == 0 or (i + 1 < len(out) and _gap(out[i], out[i + 1]) < _gap(out[i - 1], out[i])):
            j = i + 1  # join the neighbour across the shorter gap
        else:
            j = i - 1
        a, b = sorted((i, j))
        out[a : b + 1] = [Segment(out[a].start, out[b].end, out[a].events + out[b].events)]
    return out


def _gap(left: Segment, right: Segment) -> int:
    if not left.events or not right.events:
        return 0
    return right.events[0].start - left.events[-1].end


def _split_long(s: Segment, db: np.ndarray, config: SegmentationConfig) -> list[Segment]:
    """Cut a segment longer than max_seconds: after an event that ends in the second half of
    the allowed length, else (one event longer than that) at its quietest frame there."""
    longest = int(config.max_seconds * SAMPLE_RATE)
    if s.end - s.start <= longest:
        return [s]
    lo, hi = s.start + longest // 2, s.start + longest
    ends = [e.end for e in s.events if lo <= e.end < hi]
    cut = max(ends) if ends else _quietest(db, lo // HOP, hi // HOP - 1) * HOP
    cut = max(s.start + 1, min(cut, s.end - 1))
    left = [Region(e.start, min(e.end, cut), e.speech) for e in s.events if e.start < cut]
    right = [Region(max(e.start, cut), e.end, e.speech) for e in s.events if e.end > cut]
    return [Segment(s.start, cut, left), *_split_long(Segment(cut, s.end, right), db, config)]
