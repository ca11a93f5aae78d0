"""Timestamped answers: turn the model's time annotations into [{start, end, text, flag}].

MOSS-Audio learns time from the markers in its audio stream and writes times into its answer
when asked for a timestamped transcript or a time-aware description. The forms we read:

    [0.00-2.50] text            [00:01.20 --> 00:03.40] text        (1.2s - 3.4s) text
    0.00 - 57.00: birds chirping            (the release's time-aware answers, line start)
    [00:03]-[00:05] text        [00:08] text  (a point in time)     (the Thinking variants)
    <|0.00|>text<|2.50|>                                             (Whisper-style tags)

Nothing the model wrote is dropped: a line without a time is kept with `flag="no_timestamp"`
and no times, a span whose end comes before its start is kept with `flag="end_before_start"`,
and a point in time has `end=None`. Times are seconds; segment offsets (long audio split into
segments) are added by the caller.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

_T = r"(?:\d{1,3}:){0,2}\d+(?:\.\d+)?s?"  # 12.5, 12.5s, 01:02.3, 1:02:03
_DASH = r"(?:-->|->|-|–|—|~|,|to)"
_HEAD = re.compile(
    "|".join(
        (
            rf"\[\s*(?P<s1>{_T})\s*\]\s*{_DASH}\s*\[\s*(?P<e1>{_T})\s*\]",  # [00:03]-[00:05]
            rf"[\[(]\s*(?P<s2>{_T})\s*{_DASH}\s*(?P<e2>{_T})\s*[\])]",  # [s-e], (s - e)
            rf"\[\s*(?P<p>{_T})\s*\]",  # [00:08]
            rf"^\s*(?P<s3>{_T})\s*{_DASH}\s*(?P<e3>{_T})\s*:",  # 0.00 - 57.00:
        )
    ),
    re.MULTILINE,
)
_TAG = re.compile(r"<\|(?P<t>\d+(?:\.\d+)?)\|>")
_BODY_LEAD = re.compile(r"^[\s:\-–—]+")

NO_TIMESTAMP = "no_timestamp"
END_BEFORE_START = "end_before_start"


@dataclass(frozen=True)
class TimedText:
    start: float | None
    end: float | None
    text: str
    flag: str | None = None  # why the item is not a clean (start <= end) span


def _seconds(value: str) -> float:
    total = 0.0
    for part in value.rstrip("s").split(":"):
        total = total * 60 + float(part)
    return total


def _times(head: re.Match) -> tuple[float, float | None]:
    for start, end in (("s1", "e1"), ("s2", "e2"), ("s3", "e3")):
        if head[start] is not None:
            return _seconds(head[start]), _seconds(head[end])
    return _seconds(head["p"]), None


def _shift(value: float | None, offset: float) -> float | None:
    return None if value is None else round(value + offset, 3)


def parse_timestamps(text: str, offset: float = 0.0) -> list[TimedText]:
    """Every timed item of `text`, in order, shifted by `offset` seconds, untimed lines kept."""
    if not _HEAD.search(text) and _TAG.search(text):
        return _parse_tags(text, offset)
    out: list[TimedText] = []
    for line in text.splitlines():
        heads = list(_HEAD.finditer(line))
        lead = line[: heads[0].start()] if heads else line
        if lead.strip():
            out.append(TimedText(None, None, lead.strip(), NO_TIMESTAMP))
        for head, following in zip(heads, [*heads[1:], None], strict=False):
            body = line[head.end() : following.start() if following else len(line)]
            start, end = _times(head)
            flag = END_BEFORE_START if end is not None and end < start else None
            out.append(TimedText(_shift(start, offset), _shift(end, offset), _clean(body), flag))
    return out


def _clean(body: str) -> str:
    return _BODY_LEAD.sub("", body).strip()


def _parse_tags(text: str, offset: float) -> list[TimedText]:
    tags = list(_TAG.finditer(text))
    out = []
    if text[: tags[0].start()].strip():
        out.append(TimedText(None, None, text[: tags[0].start()].strip(), NO_TIMESTAMP))
    for tag, following in itertools.pairwise(tags):
        body = text[tag.end() : following.start()].strip()
        if body:
            start, end = float(tag["t"]), float(following["t"])
            flag = END_BEFORE_START if end < start else None
            out.append(TimedText(_shift(start, offset), _shift(end, offset), body, flag))
    if text[tags[-1].end() :].strip():
        out.append(TimedText(None, None, text[tags[-1].end() :].strip(), NO_TIMESTAMP))
    return out
