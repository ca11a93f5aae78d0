"""Long-audio splitting and the Thinking-variant answer split."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from model import split_audio, split_thinking
from tests.conftest import noise


def test_short_audio_is_one_segment() -> None:
    audio = noise(30.0)
    (segment,) = split_audio(audio, max_seconds=120)
    assert segment.start == 0 and segment.end == len(audio)
    assert segment.offset_seconds == 0.0


@pytest.mark.parametrize(("seconds", "limit"), [(250.0, 120.0), (61.3, 10.0), (10.0, 3.3)])
def test_segments_cover_every_sample_once(seconds: float, limit: float) -> None:
    audio = noise(seconds, seed=3)
    segments = split_audio(audio, max_seconds=limit)
    assert segments[0].start == 0 and segments[-1].end == len(audio)
    for before, after in itertools.pairwise(segments):
        assert before.end == after.start
    assert all(0 < s.duration_seconds <= limit for s in segments)
    np.testing.assert_array_equal(np.concatenate([s.audio for s in segments]), audio)
    assert segments[1].offset_seconds == segments[1].start / 16_000


def test_cuts_land_in_silence() -> None:
    # Speech-like noise with quiet gaps at 50 s and 95 s: cuts must fall inside the gaps.
    audio = noise(130.0, seed=4)
    gaps = [(50.0, 50.4), (95.0, 95.3)]
    for start, end in gaps:
        audio[int(start * 16_000) : int(end * 16_000)] *= 0.001
    segments = split_audio(audio, max_seconds=60.0, search_seconds=15.0)
    cuts = [s.start / 16_000 for s in segments[1:]]
    assert len(cuts) == 2
    for cut, (start, end) in zip(cuts, gaps, strict=True):
        assert start <= cut <= end


def test_no_quiet_point_still_respects_the_limit() -> None:
    audio = noise(25.0, seed=5)
    segments = split_audio(audio, max_seconds=10.0)
    assert all(s.duration_seconds <= 10.0 for s in segments)
    assert sum(s.end - s.start for s in segments) == len(audio)


def test_invalid_limit() -> None:
    with pytest.raises(ValueError):
        split_audio(noise(1.0), max_seconds=0)


@pytest.mark.parametrize(
    ("text", "thinking", "answer"),
    [
        (
            "<think>\nA bark, then a car.\n</think>\n\nA dog barks.",
            "A bark, then a car.",
            "A dog barks.",
        ),
        ("The reasoning.</think>The answer.", "The reasoning.", "The answer."),
        ("<think>\n\n</think>\n\nJust the answer.", "", "Just the answer."),
        ("<think>cut off by the token budget", "cut off by the token budget", ""),
        ("A plain answer.", None, "A plain answer."),
    ],
)
def test_split_thinking(text: str, thinking: str | None, answer: str) -> None:
    result = split_thinking(text)
    assert result.thinking == thinking
    assert result.answer == answer
