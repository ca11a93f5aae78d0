"""Thinking variants answer as `<think>reasoning</think>answer`: split the two parts.

The Qwen3 chat template may put `<think>` in the prompt, so the generated text can also be
`reasoning</think>answer` with no opening tag; a generation cut off by the token budget can
be `<think>reasoning` with no closing tag (then there is no answer yet).
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class ThinkingSplit:
    thinking: str | None  # None when the text has no reasoning part
    answer: str


def split_thinking(text: str) -> ThinkingSplit:
    head, close, tail = text.partition(THINK_CLOSE)
    if close:
        _, _, reasoning = head.rpartition(THINK_OPEN)
        return ThinkingSplit(thinking=reasoning.strip(), answer=tail.strip())
    before, opened, reasoning = text.partition(THINK_OPEN)
    if opened:
        return ThinkingSplit(thinking=reasoning.strip(), answer=before.strip())
    return ThinkingSplit(thinking=None, answer=text.strip())
