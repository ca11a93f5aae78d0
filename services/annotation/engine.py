"""The annotation engine: audio (with whatever labels it already has) in, a unified-caption
manifest and an SFT manifest out.

For each clip: decode it in the sandbox (an upload is hostile), segment it at event boundaries,
send each segment to its branch's annotators, merge the branch records with the labels the
clip already had (given labels win; merge.py) into one line of the dataset format, and build
that line's instruction pairs (services.core.sft, the builder the trainer uses) for the SFT
manifest. A clip that fails (it will not decode, an annotator raises) fails alone, with a code
and a message; the others go on.

The annotate worker (services.jobs.annotate), `mossctl annotate` (through that worker) and the
pipelines' data step (pipelines.components.annotate_step) all run `annotate_all`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.datasets import LABEL_FIELDS
from ..core.labels import model_event_labels
from ..core.sft import build_examples
from .annotators import DEFAULT_ANNOTATORS, build
from .branches import classify, event_audio, measure
from .merge import clip_line
from .segmentation import SAMPLE_RATE, SegmentationConfig, segment
from .vocabulary import Vocabulary


@dataclass
class AnnotationConfig:
    annotators: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_ANNOTATORS))
    model: str = ""  # the speech model of `moss-transcribe` (default: MOSS_DEFAULT_MODEL)
    max_seconds: float = 600.0  # longest clip decoded
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)


@dataclass
class Outcome:
    clip: dict[str, Any]  # the input item
    line: dict[str, Any] | None = None  # the unified-caption line
    sft: dict[str, Any] | None = None  # the same with its instruction pairs
    error: dict[str, str] | None = None  # {code, message} when the clip failed


def signature(annotator: Any) -> str:
    """How provenance names an annotator: `name`, or `name/version` when it has one."""
    version = getattr(annotator, "version", None)
    return f"{annotator.name}/{version}" if version else annotator.name


class Engine:
    def __init__(self, config: AnnotationConfig | None = None, settings: Any = None) -> None:
        self.config = config or AnnotationConfig()
        self.settings = settings
        model = self.config.model or (settings.default_model if settings is not None else "")
        self.annotators = build(self.config.annotators, model, settings)

    def vocabulary(
        self, label_map: dict[str, str] | None = None, labels: list[str] | None = None
    ) -> Vocabulary:
        """A run's vocabulary: `labels`, by default the event labels the served model
        (MOSS_DEFAULT_MODEL) was trained on, if its checkpoint records them; `label_map` first."""
        source = "given"
        if labels is None and self.settings is not None:
            source = self.settings.default_model
            labels = model_event_labels(source, self.settings)
        annotators = [a for listed in self.annotators.values() for a in listed]
        return Vocabulary.of(labels, source if labels is not None else "", label_map, annotators)

    def needed(self, clip: dict[str, Any]) -> dict[str, list] | None:
        """The annotators a clip's line needs, per branch; None when it needs no records at all
        (it has its segments and events: the caption, if missing, is built from those).

        A given label family makes the work that would only guess it wasted: no tagger when
        the line has its events, no speech annotator when it has its segments (or a transcript
        and a caption), and no transcriber (`transcribes = True`) next to a transcript."""
        given = {k for k in LABEL_FIELDS if k in clip}
        if {"segments", "events"} <= given:
            return None
        out = {branch: [] if "events" in given else list(listed)
               for branch, listed in self.annotators.items() if branch != "speech"}  # fmt: skip
        speech = self.annotators.get("speech", [])
        if "segments" in given or {"transcript", "caption"} <= given:
            speech = []
        elif "transcript" in given:
            speech = [a for a in speech if not getattr(a, "transcribes", False)]
        return {**out, "speech": speech}

    def records(
        self, audio: np.ndarray, annotators: dict[str, list] | None = None
    ) -> list[dict[str, Any]]:
        """One branch record per segment, in time order (`annotators`: those to run per
        branch, by default all of them)."""
        annotators = self.annotators if annotators is None else annotators
        out = []
        for piece in segment(audio, self.config.segmentation):
            start, end = piece.seconds
            features = measure(audio, piece)
            branch = classify(features) if piece.events else "general"
            record: dict[str, Any] = {
                "start": round(start, 3), "end": round(end, 3), "branch": branch,
                "events": [{"start": round(e.start / SAMPLE_RATE, 3),
                            "end": round(e.end / SAMPLE_RATE, 3)} for e in piece.events],
                "features": features.as_dict(),
                "active_seconds": features.active_seconds,
            }  # fmt: skip
            if not piece.events:
                record.update(tags=["silence"], caption="silence")
                out.append(record)
                continue
            # speech keeps its pauses (transcript times are the segment's); other sounds are
            # measured on their events only
            if branch == "speech":
                sound = audio[piece.start : piece.end]
            else:
                sound = event_audio(audio, piece)
            for annotator in annotators.get(branch, []):
                found = annotator.annotate(sound, record)
                record.update(found)
                record.setdefault("annotators", []).append(annotator.name)
                made = record.setdefault("produced_by", {})
                made.update(dict.fromkeys(found, signature(annotator)))
            out.append(record)
        return out

    def annotate(
        self,
        clip: dict[str, Any],
        data: bytes,
        seed: int = 0,
        vocabulary: Vocabulary | None = None,
    ) -> Outcome:
        """One clip (`clip`: its manifest line; the labels it has are kept) -> its lines."""
        from model.audio import AudioDecodeError
        from model.audio_sandbox import load_audio_isolated

        try:
            audio = load_audio_isolated(data, max_seconds=self.config.max_seconds)
        except AudioDecodeError as exc:
            return Outcome(clip, error={"code": exc.code, "message": str(exc)})
        except (ValueError, OSError) as exc:
            return Outcome(clip, error={"code": "undecodable_audio", "message": str(exc)})
        needed = self.needed(clip)
        try:
            records = [] if needed is None else self.records(audio, needed)
        except Exception as exc:  # an annotator plug-in's failure is the clip's, not the run's
            message = f"{type(exc).__name__}: {exc}"
            return Outcome(clip, error={"code": "annotator_failed", "message": message})
        line = clip_line(clip, records, len(audio) / SAMPLE_RATE, vocabulary)
        return Outcome(clip, line=line, sft=sft_line(line, seed))


def sft_line(line: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The line with its instruction pairs; `examples` it was given are kept as they are."""
    if "examples" in line:
        return line
    rng = random.Random(f"{seed}:{line.get('id', line['audio'])}")
    sources = [k for k in LABEL_FIELDS if k in line]
    provenance = {**line["provenance"], "examples": "derived:" + ",".join(sources)}
    return {**line, "examples": build_examples(line, rng), "provenance": provenance}


def annotate_items(
    engine: Engine,
    items: Iterable[dict[str, Any]],
    read: Callable[[str], bytes],
    should_stop: Callable[[], bool] | None = None,
    vocabulary: Vocabulary | None = None,
) -> Iterator[Outcome]:
    """Annotate each item (a manifest line: `{"audio": key, "id"?, "split"?, labels...}`) in
    turn; an item whose audio cannot be read or decoded fails alone."""
    for item in items:
        if should_stop is not None and should_stop():
            return
        try:
            data = read(item["audio"])
        except (KeyError, OSError, ValueError) as exc:
            yield Outcome(item, error={"code": "audio_not_found", "message": f"{item['audio']}: "
                                       f"{exc}"})  # fmt: skip
            continue
        yield engine.annotate(item, data, vocabulary=vocabulary)


@dataclass
class Annotated:
    """A run over many items: the lines of both manifests, the failures, the label report."""

    captions: list[dict[str, Any]] = field(default_factory=list)
    sft: list[dict[str, Any]] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)  # {id, code, message}
    labels: dict[str, Any] = field(default_factory=dict)  # Vocabulary.report()


def annotate_all(
    engine: Engine,
    items: list[dict[str, Any]],
    read: Callable[[str], bytes],
    vocabulary: Vocabulary | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: Callable[[int, Annotated], None] | None = None,
) -> Annotated:
    """The loop the annotate worker and the pipeline step share: every item, collected, with
    `progress(items done, so far)` after each."""
    vocabulary = vocabulary if vocabulary is not None else engine.vocabulary()
    run = Annotated()
    outcomes = annotate_items(engine, items, read, should_stop, vocabulary)
    for done, outcome in enumerate(outcomes, 1):
        if outcome.error is not None:
            run.failures.append({"id": outcome.clip.get("id"), **outcome.error})
        else:
            run.captions.append(outcome.line)
            run.sft.append(outcome.sft)
        if progress is not None:
            progress(done, run)
    run.labels = vocabulary.report()
    return run
