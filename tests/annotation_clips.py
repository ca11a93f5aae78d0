"""Clips with known ground truth for the annotation tests: spoken sentences (eSpeak NG, with
each word's times), tones, noise, sweeps, click trains and melodies, apart by known gaps."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipelines.data import SAMPLE_RATE, Event, _render, make_melody, sentence
from pipelines.speech import VOICES, speak

SOUNDS = ("low beep", "high beep", "noise burst", "chirp", "click train")


@dataclass
class Truth:
    start: float
    end: float
    branch: str  # speech | music | general
    label: str  # the sentence, the sound, or "melody"
    words: list[tuple[float, float]] = field(default_factory=list)


def compose(rng: np.random.Generator, kinds: list[str]) -> tuple[np.ndarray, list[Truth]]:
    """Parts of the given kinds (speech, music, general) one after another, 0.5-0.9 s apart."""
    pieces, truths, cursor = [], [], float(rng.uniform(0.3, 0.6))
    for kind in kinds:
        if kind == "speech":
            text = sentence(rng)
            spoken = speak(text, str(rng.choice(VOICES)), int(rng.integers(130, 190)),
                           int(rng.integers(30, 70)))  # fmt: skip
            audio = 0.5 * spoken.audio / max(1e-6, float(np.abs(spoken.audio).max()))
            words = [(cursor + w.start, cursor + w.end) for w in spoken.words]
            truth = Truth(words[0][0], words[-1][1], "speech", text, words)
        elif kind == "music":
            audio = make_melody(rng, float(rng.choice([90, 120, 150])), int(rng.integers(12)), 6)
            truth = Truth(cursor, cursor + len(audio) / SAMPLE_RATE, "music", "melody")
        else:
            label = str(rng.choice(SOUNDS))
            length = round(float(rng.uniform(0.6, 1.4)), 2)
            audio = _render(Event(label, 0.0, length), rng)
            truth = Truth(cursor, cursor + length, "general", label)
        pieces.append((cursor, audio))
        truths.append(truth)
        cursor += len(audio) / SAMPLE_RATE + float(rng.uniform(0.5, 0.9))
    out = (0.003 * rng.standard_normal(int((cursor + 0.3) * SAMPLE_RATE))).astype(np.float32)
    for start, audio in pieces:
        first = int(start * SAMPLE_RATE)
        out[first : first + len(audio)] += audio
    return out, truths


def clip_set(seed: int = 0, count: int = 12) -> list[tuple[np.ndarray, list[Truth]]]:
    """Clips of two to four parts each, every kind in every position across the set."""
    rng = np.random.default_rng(seed)
    kinds = ("speech", "music", "general")
    return [compose(rng, [kinds[(i + j) % 3] if rng.random() < 0.7 else str(rng.choice(kinds))
                          for j in range(int(rng.integers(2, 5)))])
            for i in range(count)]  # fmt: skip
