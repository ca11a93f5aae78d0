"""The words the engine's event labels end up in: a model trained on "low beep" learns nothing
from data that says "low tone", and its event questions ("How many low beep events?") are
asked in its own labels.

A label the engine produced is renamed, in this order:

1. by the mapping file, when it names the label (`--label-map`, a job's `label_map`, the
   annotate pipeline's `label_map`: JSON `{"low tone": "low beep", ...}`);
2. kept, when it is in the vocabulary: by default the event labels the served model was
   trained on (`event_labels.json` in its checkpoint, services.core.labels);
3. else renamed to the first synonym its annotator declares (an annotator's `synonyms`,
   e.g. signal-tags: "low tone" -> "low beep") that is in the vocabulary;
4. else kept as it is, and counted as unmapped in the job's report: a new sound is still
   worth a label, and the count says which mapping to add.

Labels a manifest line already had are never renamed: they are the truth (merge.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.labels import check_label_map

__all__ = ["Vocabulary", "check_label_map"]


@dataclass
class Vocabulary:
    """One run's renaming of the engine's event labels, and what it did (its report)."""

    labels: frozenset[str] | None = None  # the target vocabulary; None: unknown
    source: str = ""  # where it came from, e.g. the served model's reference
    label_map: dict[str, str] = field(default_factory=dict)
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    mapped: Counter = field(default_factory=Counter)  # (from, to) -> events
    unmapped: Counter = field(default_factory=Counter)  # label -> events

    @classmethod
    def of(
        cls,
        labels: Iterable[str] | None,
        source: str = "",
        label_map: Mapping[str, str] | None = None,
        annotators: Iterable[Any] = (),
    ) -> Vocabulary:
        synonyms: dict[str, tuple[str, ...]] = {}
        for annotator in annotators:
            for label, names in getattr(annotator, "synonyms", {}).items():
                synonyms[label] = (*synonyms.get(label, ()), *names)
        return cls(
            labels=None if labels is None else frozenset(labels),
            source=source,
            label_map=dict(label_map or {}),
            synonyms=synonyms,
        )

    def name(self, label: str) -> str:
        """The label in the vocabulary's words (counted in the report)."""
        target = self.label_map.get(label)
        if target is None and self.labels is not None:
            if label in self.labels:
                return label
            target = next((s for s in self.synonyms.get(label, ()) if s in self.labels), None)
        if target is None:
            self.unmapped[label] += 1
            return label
        if target != label:
            self.mapped[(label, target)] += 1
        return target

    def report(self) -> dict[str, Any]:
        return {
            "vocabulary": self.source or None,
            "vocabulary_labels": None if self.labels is None else sorted(self.labels),
            "label_map": len(self.label_map),
            "mapped": [
                {"from": a, "to": b, "events": n} for (a, b), n in sorted(self.mapped.items())
            ],
            "unmapped": dict(sorted(self.unmapped.items())),
        }
