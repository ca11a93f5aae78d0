"""The event labels a checkpoint was trained on: a small file the trainer writes beside the
weights (`event_labels.json`), so that the vocabulary travels with the model wherever the
checkpoint goes (a local directory, a registry version's artifacts, a predictor's storage).

The annotation engine reads it from the served model to name what it hears in the words the
model already knows ("low beep", not "low tone"; docs/annotation.md). A checkpoint without the
file (a released one, or one trained before it existed) has no known vocabulary. A label map
(`{"low tone": "low beep"}`) renames labels explicitly; `check_label_map` is its one check, for
the API (422 `invalid_label_map`), `mossctl annotate --label-map` and the annotate pipeline.

Torch-free: a JSON file and a model reference.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

EVENT_LABELS_FILE = "event_labels.json"
log = logging.getLogger("moss.labels")
MAX_LABEL_MAP = 1000  # entries in a mapping file
MAX_LABEL = 256  # characters in a label


def check_label_map(value: Any) -> dict[str, str]:
    """A mapping file's content, or ValueError saying what to fix."""
    if not isinstance(value, Mapping):
        raise ValueError('a label map is a JSON object: {"low tone": "low beep", ...}')
    if len(value) > MAX_LABEL_MAP:
        raise ValueError(f"a label map has at most {MAX_LABEL_MAP} entries ({len(value)} given)")
    for key, to in value.items():
        if not (isinstance(key, str) and isinstance(to, str)):
            raise ValueError(f"label map entry {str(key)[:40]!r}: labels are strings")
        if not key.strip() or not to.strip() or len(key) > MAX_LABEL or len(to) > MAX_LABEL:
            raise ValueError(
                f"label map entry {key[:40]!r}: labels are 1 to {MAX_LABEL} characters"
            )
    return dict(value)


def training_event_labels(clips: Iterable[dict[str, Any]], split: str = "train") -> set[str]:
    """The event labels of the clips a run trains on (its `split`)."""
    return {
        event["label"]
        for clip in clips
        if clip.get("split", "train") == split
        for event in clip.get("events", [])
    }


def write_event_labels(directory: Path, labels: Iterable[str]) -> Path:
    path = Path(directory) / EVENT_LABELS_FILE
    path.write_text(json.dumps({"event_labels": sorted(set(labels))}, indent=2) + "\n")
    return path


def read_event_labels(directory: Path) -> list[str] | None:
    """The checkpoint's labels; None when it records none (or the file is unreadable)."""
    try:
        data = json.loads((Path(directory) / EVENT_LABELS_FILE).read_text())
    except (OSError, ValueError):
        return None
    labels = data.get("event_labels") if isinstance(data, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) and x for x in labels):
        return None
    return labels


def model_event_labels(ref: str, settings: Any) -> list[str] | None:
    """The labels of the model a reference resolves to (a registry version is downloaded
    once, as for serving); None when it records none or cannot be resolved now."""
    from .modelref import ModelNotFound, resolve

    if not ref:
        return None
    try:
        spec = resolve(ref, settings, allow_paths=True)
    except (ModelNotFound, ValueError):
        return None
    except Exception as exc:  # the registry unreachable: annotate without a vocabulary
        log.warning("no event vocabulary from %s: %s: %s", ref, type(exc).__name__, exc)
        return None
    return read_event_labels(spec.path)
