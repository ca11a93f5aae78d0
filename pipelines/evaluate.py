"""Evaluation on a held-out split: the model answers every example; metrics compare answers.

Each family of labels the manifest has is scored; a family it lacks gives no metric (the
promotion gate then skips that family's thresholds, services.core.registry).

- speech: `wer`, `cer` of transcripts (jiwer, on lower-cased text without punctuation);
  `segments_wer` and `segments_aas_ms` of timestamped transcripts (the text of the lines,
  and the mean shift of their boundaries).
- events: `event_qa_accuracy` ("What happens at t s?": the named event is right),
  `count_accuracy` (the exact count), `timestamp_error_median_s` ("When does X start?": the
  median absolute error; an answer with no number counts as the clip's duration), `aas_ms`
  (timestamped event lists: the paper's AAS, the mean absolute shift of event boundaries in
  ms; a missed event counts as shifted by its length).
- caption: `caption_wer`, `caption_cer` against the reference caption, and, on clips with
  events, `caption_keyword_recall` (the share of the clip's event labels a caption names).
- instructions: `instruction_exact_match` and `instruction_token_f1` (SQuAD-style word F1).

Every evaluation also says what it was measured on (`evaluation_record`): figures are only
comparable between evaluations with the same `evaluation_set` digest.
"""

from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jiwer

from model.answer import assemble_answer
from model.batching import left_pad
from model.timestamps import parse_timestamps
from services.core.registry import code_version
from services.core.sft import FAMILY_OF

from .train import Example, Examples

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
# Part of every evaluation set's digest: bump it when a metric's definition changes, so that
# figures computed the old way are never compared with new ones. (The evaluator's git commit is
# recorded too, but it changes with every commit, and most commits change no metric.)
SCORER_VERSION = "1"


@dataclass
class Prediction:
    example: Example
    text: str


def predict(
    model, examples: Examples, processor, batch_size: int = 16, max_new_tokens: int | None = None
) -> list[Prediction]:
    """Greedy answers for every example, in left-padded batches.

    Without `max_new_tokens`, each batch may write twice its longest reference answer (at
    least 48 tokens): a transcript needs more room than a one-word answer.
    """
    out: list[Prediction] = []
    items = sorted(examples.items, key=lambda e: len(e.answer))  # similar lengths batch together
    for first in range(0, len(items), batch_size):
        group = items[first : first + batch_size]
        budget = max_new_tokens or max(48, 2 * max(len(e.labels) - e.labels.count(-100)
                                                   for e in group))  # fmt: skip
        ids, mask = left_pad([e.prompt_ids for e in group])
        width = ids.shape[1]
        batch = examples.batch(group)
        new = model.generate(
            ids,
            attention_mask=mask,
            audio_data=batch["audio_data"],
            audio_data_seqlens=batch["audio_data_seqlens"],
            max_new_tokens=budget,
        )[:, width:]
        for example, row in zip(group, new, strict=True):
            text = assemble_answer([processor.decode(row.tolist())], [0.0]).text
            out.append(Prediction(example, text))
    return out


_PUNCTUATION = re.compile(r"[^\w\s']")


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces: what WER is computed on."""
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _error_rates(references: list[str], hypotheses: list[str]) -> tuple[float, float]:
    refs = [normalize(r) or "-" for r in references]
    hyps = [normalize(h) or "-" for h in hypotheses]
    return jiwer.wer(refs, hyps), jiwer.cer(refs, hyps)


def _label_in(text: str, labels: list[str]) -> str | None:
    """The longest known event label the text names (labels: the manifest's vocabulary)."""
    text = text.lower()
    found = [label for label in labels if label.lower() in text]
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


def _token_f1(predicted: str, reference: str) -> float:
    pred, ref = normalize(predicted).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or not common:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _speech(by_kind: dict[str, list[Prediction]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if by_kind["transcript"]:
        refs = [p.example.answer for p in by_kind["transcript"]]
        metrics["wer"], metrics["cer"] = _error_rates(refs, [p.text for p in by_kind["transcript"]])
    if by_kind["segments"]:
        texts = [
            (" ".join(i.text for i in parse_timestamps(p.example.answer)),
             " ".join(i.text for i in parse_timestamps(p.text)))
            for p in by_kind["segments"]
        ]  # fmt: skip
        metrics["segments_wer"] = _error_rates([r for r, _ in texts], [h for _, h in texts])[0]
        metrics["segments_aas_ms"] = statistics.fmean(
            _boundaries_error_ms(p.text, p.example.answer) for p in by_kind["segments"]
        )
    return metrics


def _events(by_kind: dict[str, list[Prediction]], clips, labels) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if by_kind["event_at"]:
        hits = [
            _label_in(p.text, labels) == _label_in(p.example.answer, labels)
            for p in by_kind["event_at"]
        ]
        metrics["event_qa_accuracy"] = sum(hits) / len(hits)
    if by_kind["count"]:
        hits = [_NUMBER.findall(p.text)[:1] == [p.example.answer] for p in by_kind["count"]]
        metrics["count_accuracy"] = sum(hits) / len(hits)
    if by_kind["event_start"]:
        errors = []
        for p in by_kind["event_start"]:
            numbers = _NUMBER.findall(p.text)
            duration = clips[p.example.clip].get("duration") or 0.0
            truth = float(p.example.answer)
            errors.append(abs(float(numbers[0]) - truth) if numbers else max(duration, truth))
        metrics["timestamp_error_median_s"] = statistics.median(errors)
    if by_kind["timestamps"]:
        metrics["aas_ms"] = statistics.fmean(
            _boundaries_error_ms(p.text, p.example.answer) for p in by_kind["timestamps"]
        )
    return metrics


def _captions(by_kind: dict[str, list[Prediction]], clips) -> dict[str, float]:
    metrics: dict[str, float] = {}
    captions = by_kind["caption"]
    if not captions:
        return metrics
    metrics["caption_wer"], metrics["caption_cer"] = _error_rates(
        [p.example.answer for p in captions], [p.text for p in captions]
    )
    recalls = []
    for p in captions:
        labels = {e["label"].lower() for e in clips[p.example.clip].get("events", [])}
        if labels:  # a clip without events has no keywords to recall
            recalls.append(sum(label in p.text.lower() for label in labels) / len(labels))
    if recalls:
        metrics["caption_keyword_recall"] = statistics.fmean(recalls)
    return metrics


def score(predictions: list[Prediction], clips: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of every family the predictions cover (an absent family adds none)."""
    by_kind: dict[str, list[Prediction]] = defaultdict(list)
    for p in predictions:
        by_kind[p.example.kind].append(p)
    labels = sorted({e["label"] for c in clips for e in c.get("events", [])})
    metrics = {**_speech(by_kind), **_events(by_kind, clips, labels), **_captions(by_kind, clips)}
    if by_kind["instruction"]:
        pairs = [(p.text, p.example.answer) for p in by_kind["instruction"]]
        metrics["instruction_exact_match"] = statistics.fmean(
            float(normalize(a) == normalize(b)) for a, b in pairs
        )
        metrics["instruction_token_f1"] = statistics.fmean(_token_f1(a, b) for a, b in pairs)
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


def evaluation_record(
    examples: Examples,
    metrics: dict[str, float],
    manifest: str,
    manifest_digest: str,
    per_kind: int,
) -> dict[str, Any]:
    """What one evaluation was measured on, with its figures (stored on the version).

    The set's digest covers the manifest's content, the examples actually scored, in order
    (clip, kind, reference answer: clips that would not decode and the per-kind cap change it),
    and SCORER_VERSION: two evaluations with one digest asked the same questions of the same
    audio and scored the answers the same way."""
    scored = [
        [examples.clips[e.clip].get("id"), examples.clips[e.clip]["audio"], e.kind, e.answer]
        for e in examples.items
    ]
    identity = {"scorer": SCORER_VERSION, "manifest": manifest_digest, "examples": scored}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    per_family: dict[str, int] = defaultdict(int)
    for example in examples.items:
        per_family[FAMILY_OF.get(example.kind, "instructions")] += 1
    return {
        "evaluation_set": digest,
        "manifest": manifest,
        "manifest_digest": manifest_digest,
        "split": "heldout",
        "per_kind": per_kind,
        "examples": len(examples.items),
        "examples_per_family": dict(sorted(per_family.items())),
        "examples_per_kind": examples.kind_counts(),
        "evaluator_version": code_version(),
        "scorer_version": SCORER_VERSION,
        "metrics": metrics,
        "at": datetime.now(UTC).isoformat(),
    }
