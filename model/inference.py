"""One request end to end: audio -> segments -> batched generation -> text (+ thinking).

By default the model sees the whole clip (as the official model does); with
`max_segment_seconds`, audio longer than that is split at quiet points (what transcription of
long recordings wants), the segments run as one left-padded batch (in groups of `batch_size`)
and their answers are joined in order, each keeping its time offset so callers can shift
timestamps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .answer import assemble_answer
from .processor import MossAudioProcessor
from .segment import Segment, split_audio


@dataclass
class SegmentAnswer:
    offset_seconds: float
    duration_seconds: float
    text: str
    thinking: str | None
    num_tokens: int


@dataclass
class InferenceResult:
    text: str
    thinking: str | None
    segments: list[SegmentAnswer] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_tokens for s in self.segments)


def run_inference(
    model: torch.nn.Module,
    processor: MossAudioProcessor,
    audio: np.ndarray,
    prompt: str,
    *,
    max_segment_seconds: float | None = None,
    batch_size: int = 4,
    on_step: Callable[[int], None] | None = None,
    **generation: object,
) -> InferenceResult:
    """`on_step(n)` is called after every decoding step with the tokens produced so far."""
    if max_segment_seconds is None:
        segments = [Segment(0, len(audio), audio)]
    else:
        segments = split_audio(audio, max_seconds=max_segment_seconds)
    texts: list[str] = []
    lengths: list[int] = []
    produced = 0
    for first in range(0, len(segments), batch_size):
        group = segments[first : first + batch_size]
        inputs = processor(text=[prompt] * len(group), audios=[s.audio for s in group])

        def count(tokens: torch.Tensor) -> None:
            nonlocal produced
            produced += len(tokens)
            if on_step is not None:
                on_step(produced)

        new = model.generate(**inputs, streamer=count, **generation)
        for row in new[:, inputs["input_ids"].shape[1] :]:
            ids = _strip_padding(row.tolist(), processor.pad_token_id)
            texts.append(processor.decode(ids))
            lengths.append(len(ids))
    answer = assemble_answer(texts, [s.offset_seconds for s in segments])
    return InferenceResult(
        text=answer.text,
        thinking=answer.thinking,
        segments=[
            SegmentAnswer(s.offset_seconds, s.duration_seconds, part.answer, part.thinking, n)
            for s, part, n in zip(segments, answer.parts, lengths, strict=True)
        ],
    )


def _strip_padding(ids: list[int], pad_id: int) -> list[int]:
    while ids and ids[-1] == pad_id:
        ids.pop()
    return ids
