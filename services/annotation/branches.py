"""Which branch annotates a segment: speech, music or general audio.

The method (its accuracy on generated clips is measured by tests/unit/test_annotation.py and
reported in docs/annotation.md):

- speech: voice activity (silero-vad) covers at least half of the segment's events;
- music: otherwise, when the sound is tonal (spectral flatness under 0.1 in at least 60 % of
  its loud frames) and holds at least three distinct notes (pitches, to the semitone, each
  held for 80 ms or more), with at least three onsets: a melody. A beep is one held note, a
  chirp slides through pitches without holding any, noise and clicks are not tonal;
- general: everything else (and a segment with no event: silence).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .segmentation import HOP, SAMPLE_RATE, Segment

BRANCHES = ("speech", "music", "general")


@dataclass(frozen=True)
class Features:
    """What the classifier measured on a segment's events (kept in the branch record)."""

    speech_share: float
    tonal_share: float
    notes: int
    onsets: int
    active_seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in self.__dict__.items()}


def event_audio(audio: np.ndarray, segment: Segment) -> np.ndarray:
    """The samples of the segment's events, end to end (the segment when it has none)."""
    if not segment.events:
        return audio[segment.start : segment.end]
    return np.concatenate([audio[e.start : e.end] for e in segment.events])


def notes_held(f0: np.ndarray, voiced: np.ndarray, min_frames: int = 8) -> int:
    """Distinct semitones held for at least `min_frames` frames in a row."""
    midi = np.full(len(f0), -1)
    midi[voiced] = np.round(12 * np.log2(f0[voiced] / 440.0) + 69).astype(int)
    held, run, last = set(), 0, None
    for note in midi:
        run = run + 1 if note == last else 1
        last = note
        if note >= 0 and run >= min_frames:
            held.add(int(note))
    return len(held)


def dominant_pitch(piece: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per 10 ms frame: the strongest frequency, whether the frame is tonal, its loudness."""
    import librosa

    spectrum = np.abs(librosa.stft(piece, n_fft=2048, hop_length=HOP))
    flatness = librosa.feature.spectral_flatness(S=spectrum)[0]
    freqs = librosa.fft_frequencies(sr=SAMPLE_RATE, n_fft=2048)
    f0 = freqs[np.argmax(spectrum[1:], axis=0) + 1]
    level = 20 * np.log10(spectrum.max(axis=0) + 1e-9)
    loud = level > level.max() - 30
    return f0, (flatness < 0.1) & loud, loud


def measure(audio: np.ndarray, segment: Segment) -> Features:
    import librosa

    piece = event_audio(audio, segment)
    total = sum(e.end - e.start for e in segment.events)
    speech = sum(e.end - e.start for e in segment.events if e.speech)
    if len(piece) < 2048:
        return Features(speech / total if total else 0.0, 0.0, 0, 0, len(piece) / SAMPLE_RATE)
    f0, tonal, loud = dominant_pitch(piece)
    onsets = librosa.onset.onset_detect(y=piece, sr=SAMPLE_RATE, hop_length=HOP)
    return Features(
        speech_share=speech / total if total else 0.0,
        tonal_share=float(tonal.sum() / max(1, loud.sum())),
        notes=notes_held(f0, tonal),
        onsets=len(onsets),
        active_seconds=total / SAMPLE_RATE,
    )


def classify(features: Features) -> str:
    if features.speech_share >= 0.5:
        return "speech"
    if features.tonal_share >= 0.6 and features.notes >= 3 and features.onsets >= 3:
        return "music"
    return "general"
