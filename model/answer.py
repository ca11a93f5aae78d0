"""From decoded segment texts to one answer: thinking split off, parts joined, times shifted.

Long audio runs as segments, each generated on its own with its own time markers starting at
0. Putting them back together is the same wherever the model runs (`mossctl infer`, the
workers, evaluation): each part's reasoning is split from its answer, the answers are joined in
order, and timestamps are moved by the segment's offset in the clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .thinking import ThinkingSplit, split_thinking
from .timestamps import TimedText, parse_timestamps


@dataclass
class Answer:
    text: str
    thinking: str | None
    parts: list[ThinkingSplit] = field(default_factory=list)  # one per segment, in order
    timed: list[TimedText] | None = None  # with `timestamps=True`: items in clip time

    def as_result(self) -> dict[str, Any]:
        """The job result's answer fields (`text`, `segments` when timed, `thinking`)."""
        result: dict[str, Any] = {"text": self.text}
        if self.timed is not None:
            result["segments"] = [_timed_entry(item) for item in self.timed]
        if self.thinking:
            result["thinking"] = self.thinking
        return result


def assemble_answer(
    texts: Sequence[str], offsets: Sequence[float], timestamps: bool = False
) -> Answer:
    """Decoded texts of consecutive segments (starting `offsets` seconds into the clip)."""
    parts = [split_thinking(text) for text in texts]
    timed = None
    if timestamps:
        timed = [
            item
            for part, offset in zip(parts, offsets, strict=True)
            for item in parse_timestamps(part.answer, offset=offset)
        ]
    thoughts = [p.thinking for p in parts if p.thinking]
    return Answer(
        text=" ".join(p.answer for p in parts if p.answer),
        thinking="\n\n".join(thoughts) if thoughts else None,
        parts=parts,
        timed=timed,
    )


def _timed_entry(item: TimedText) -> dict[str, Any]:
    entry: dict[str, Any] = {"start": item.start, "end": item.end, "text": item.text}
    return {**entry, "flag": item.flag} if item.flag else entry
