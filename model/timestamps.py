"""Timestamped transcripts: turn the model's time annotations into [{start, end, text}].

MOSS-Audio learns time from the markers in its audio stream and writes times into its answer
when asked for a timestamped transcript. Released outputs use bracketed spans; we accept the
forms seen in practice: `[0.00-2.50] text`, `[00:01.20 --> 00:03.40] text`,
`<|0.00|>text<|2.50|>` and `(1.2s - 3.4s) text`. Times are seconds; segment offsets (long audio
split into segments) are added by the caller.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

_TIME = r"(?:\d+:)?\d+(?:\.\d+)?s?"
_SPAN = re.compile(
    rf"[\[(]\s*(?P<start>{_TIME})\s*(?:-->|-|–|~|,|to)\s*(?P<end>{_TIME})\s*[\])]\s*"
)
_TAG = re.compile(r"<\|(?P<t>\d+(?:\.\d+)?)\|>")


@dataclass(frozen=True)
class TimedText:
    start: float
    end: float
    text: str


def _seconds(value: str) -> float:
    value = value.rstrip("s")
    if ":" in value:
        minutes, seconds = value.rsplit(":", 1)
        return int(minutes) * 60 + float(seconds)
    return float(value)


def parse_timestamps(text: str, offset: float = 0.0) -> list[TimedText]:
    """All timed spans in `text`, shifted by `offset` seconds; [] when it has none."""
    spans = list(_SPAN.finditer(text))
    if spans:
        out = []
        for span, following in zip(spans, [*spans[1:], None], strict=True):
            body = text[span.end() : following.start() if following else len(text)].strip()
            start, end = _seconds(span["start"]), _seconds(span["end"])
            if end >= start:
                out.append(TimedText(round(start + offset, 3), round(end + offset, 3), body))
        return out
    tags = list(_TAG.finditer(text))
    out = []
    for tag, following in itertools.pairwise(tags):
        body = text[tag.end() : following.start()].strip()
        if body:
            start, end = float(tag["t"]), float(following["t"])
            out.append(TimedText(round(start + offset, 3), round(end + offset, 3), body))
    return out
