"""Evaluation on a held-out split: the model answers every example; metrics compare answers.

- `event_qa_accuracy` ("What happens at t s?"): the named event type is right (chance 1/5).
- `count_accuracy` ("How many beeps?"): the exact count.
- `timestamp_error_median_s` ("When does X start?"): median absolute error of the start time,
  in seconds; an answer with no number counts as the clip's duration.
- `aas_ms` (timestamped event lists): the paper's AAS, the mean absolute shift of event
  boundaries in ms; a missed event counts as shifted by its length.
- `caption_keyword_recall`: the share of the clip's event types a caption names.
- `caption_wer`, `caption_cer`: word and character error rates of captions (jiwer).
"""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import jiwer

from model.answer import assemble_answer
from model.batching import left_pad
from model.timestamps import parse_timestamps

from .data import EVENT_TYPES
from .train import Example, Examples

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


@dataclass
class Prediction:
    example: Example
    text: str


def predict(
    model, examples: Examples, processor, batch_size: int = 16, max_new_tokens: int = 48
) -> list[Prediction]:
    """Greedy answers for every example, in left-padded batches."""
    out: list[Prediction] = []
    items = examples.items
    for first in range(0, len(items), batch_size):
        group = items[first : first + batch_size]
        ids, mask = left_pad([e.prompt_ids for e in group])
        width = ids.shape[1]
        batch = examples.batch(group)
        new = model.generate(
            ids,
            attention_mask=mask,
            audio_data=batch["audio_data"],
            audio_data_seqlens=batch["audio_data_seqlens"],
            max_new_tokens=max_new_tokens,
        )[:, width:]
        for example, row in zip(group, new, strict=True):
            text = assemble_answer([processor.decode(row.tolist())], [0.0]).text
            out.append(Prediction(example, text))
    return out


def _label_in(text: str) -> str | None:
    text = text.lower()
    found = [label for label in EVENT_TYPES if label in text]
    return max(found, key=len) if found else None


def _boundaries_error_ms(predicted: str, reference: str) -> float:
    ref = parse_timestamps(reference)
    pred = parse_timestamps(predicted)
    shifts = []
    for i, item in enumerate(ref):
        length = item.end - item.start
        if i < len(pred):
            # A boundary the model left out (a point in time, an untimed line) counts as missed.
            for guess, truth in ((pred[i].start, item.start), (pred[i].end, item.end)):
                shifts.append(length if guess is None else abs(guess - truth))
        else:  # a missed event counts as shifted by its own length
            shifts += [length] * 2
    return 1000 * statistics.fmean(shifts) if shifts else 0.0


def score(predictions: list[Prediction], clips: list[dict[str, Any]]) -> dict[str, float]:
    by_kind: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_kind[p.example.kind].append(p)
    metrics: dict[str, float] = {}
    if by_kind["event_at"]:
        hits = [_label_in(p.text) == _label_in(p.example.answer) for p in by_kind["event_at"]]
        metrics["event_qa_accuracy"] = sum(hits) / len(hits)
    if by_kind["count"]:
        hits = [_NUMBER.findall(p.text)[:1] == [p.example.answer] for p in by_kind["count"]]
        metrics["count_accuracy"] = sum(hits) / len(hits)
    if by_kind["event_start"]:
        errors = []
        for p in by_kind["event_start"]:
            numbers = _NUMBER.findall(p.text)
            duration = clips[p.example.clip]["duration"]
            truth = float(p.example.answer)
            errors.append(abs(float(numbers[0]) - truth) if numbers else duration)
        metrics["timestamp_error_median_s"] = statistics.median(errors)
    if by_kind["timestamps"]:
        metrics["aas_ms"] = statistics.fmean(
            _boundaries_error_ms(p.text, p.example.answer) for p in by_kind["timestamps"]
        )
    if by_kind["caption"]:
        recalls = []
        for p in by_kind["caption"]:
            labels = {e["label"] for e in clips[p.example.clip]["events"]}
            recalls.append(sum(label in p.text.lower() for label in labels) / len(labels))
        metrics["caption_keyword_recall"] = statistics.fmean(recalls)
        references = [p.example.answer for p in by_kind["caption"]]
        hypotheses = [p.text or "-" for p in by_kind["caption"]]
        metrics["caption_wer"] = jiwer.wer(references, hypotheses)
        metrics["caption_cer"] = jiwer.cer(references, hypotheses)
    metrics["examples"] = float(len(predictions))
    return metrics


def first_per_kind(items: list[Example], limit: int) -> list[Example]:
    """At most `limit` examples of each kind, so every metric rests on a known sample size."""
    counts: dict[str, int] = defaultdict(int)
    kept = []
    for example in items:
        if counts[example.kind] < limit:
            counts[example.kind] += 1
            kept.append(example)
    return kept


def evaluate(
    model, examples: Examples, processor, **kwargs: Any
) -> tuple[dict[str, float], list[Prediction]]:
    predictions = predict(model, examples, processor, **kwargs)
    return score(predictions, examples.clips), predictions
