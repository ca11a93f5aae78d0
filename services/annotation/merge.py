"""A clip's line in the platform's dataset format (docs/datasets.md) from what the manifest
already said about it and what the branch records found:

- Given labels win. Each label family the input line has (`transcript`, `segments`, `events`,
  `caption`, `instructions`, `examples`) is kept as it is, never replaced or merged with a
  guess; the engine fills in only the families that are absent.
- Provenance per field (`provenance`): `given` (the input had it), `annotator:NAME[/VERSION],...`
  (the annotators whose output it is), or `derived:FIELD,...` (built from those fields of the
  line). A field the input already had keeps the provenance the input gave it, so annotating an
  annotated manifest again never turns a guess into truth.
- Speech becomes timed `segments` (the transcript's lines shifted to clip time, or the
  segment's span), other sounds timed `events` (the first tag of each record, in the
  vocabulary's words, vocabulary.py); speech without a transcript is an event `voice` when
  the line has no segments.
- A given `transcript` is the truth of what is said, so the ASR's text never reaches the line
  next to it: the line's one segment is the given transcript over the detected speech (first
  to last speech event; provenance `derived:transcript`), and the caption quotes it.
- The unified caption is built from the line's own `segments` and `events`, in time order
  with their times, so the two never disagree:

    0.7-1.9 s: someone says "open the red door" (2.5 words/s, moderately loud);
    2.5-3.7 s: a low beep (loud); 6.0-10.0 s: a melody (moderately loud, about 90 BPM, A# major).

  The parenthesised descriptors come from the records of the items the engine found (and of
  the speech under a given transcript); given items have none. Every branch record is kept
  under `annotation`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..core.datasets import LABEL_FIELDS
from ..core.sft import article
from .vocabulary import Vocabulary

GIVEN = "given"
SPEECH_EVENT = "voice"  # the label of speech the engine could not transcribe


def level_word(db: float) -> str:
    return "loud" if db > -12 else "quiet" if db < -30 else "moderately loud"


def descriptors(record: dict[str, Any]) -> str:
    """What the annotators measured, in a few words: rate, level, tempo, key."""
    out = []
    if "speaking_rate_wps" in record:
        out.append(f"{record['speaking_rate_wps']:g} words/s")
    if "loudness_db" in record:
        out.append(level_word(record["loudness_db"]))
    if "tempo_bpm" in record:
        out.append(f"about {round(record['tempo_bpm'])} BPM")
    if record.get("key"):
        out.append(str(record["key"]))
    return ", ".join(out)


def phrase(item: dict[str, Any]) -> str:
    """A segment or an event in words."""
    if "text" in item:
        return f'someone says "{item["text"].strip()}"'
    return article(item["label"])


def timeline_caption(
    segments: list[dict[str, Any]], events: list[dict[str, Any]], notes: dict[int, str]
) -> str:
    """One `start-end s: what` clause per segment and event, in time order (`notes`: an
    item's descriptors, by the item's id())."""
    items = sorted([*segments, *events], key=lambda i: (i["start"], i["end"]))
    parts = []
    for item in items:
        note = notes.get(id(item))
        text = phrase(item) + (f" ({note})" if note else "")
        parts.append(f"{item['start']:.1f}-{item['end']:.1f} s: {text}")
    return "; ".join(parts) + "." if parts else "Silence."


def speech_segments(record: dict[str, Any]) -> list[dict[str, Any]]:
    lines = record.get("lines") or []
    offset = record["start"]
    if lines:
        out = []
        for line in lines:
            start, end = offset + line["start"], min(record["end"], offset + line["end"])
            if line["start"] <= line["end"] and start <= end:
                out.append({"start": round(start, 2), "end": round(end, 2), "text": line["text"]})
        return out
    if record.get("transcript", "").strip():
        first, last = record["events"][0]["start"], record["events"][-1]["end"]
        return [{"start": first, "end": last, "text": record["transcript"]}]
    return []


@dataclass
class Found:
    """The labels the records hold, with their descriptors and who produced them."""

    segments: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)  # sounds other than speech
    speech: list[dict[str, Any]] = field(default_factory=list)  # untranscribed speech events
    notes: dict[int, str] = field(default_factory=dict)
    by: dict[str, set[str]] = field(default_factory=lambda: {"segments": set(), "events": set(),
                                                             "speech": set()})  # fmt: skip

    def add(self, kind: str, items: list[dict[str, Any]], record: dict, by: str) -> None:
        getattr(self, kind).extend(items)
        self.by[kind].add(by)
        note = descriptors(record)
        for item in items:
            self.notes[id(item)] = note


def found_labels(records: list[dict[str, Any]], transcribed: bool = False) -> Found:
    """The records' labels; `transcribed`: the line has its own transcript, so speech is only
    where it was heard (`speech`), never what an ASR guessed was said."""
    found = Found()
    for r in records:
        made = r.get("produced_by", {})
        if r["branch"] == "speech":
            segments = [] if transcribed else speech_segments(r)
            if segments:
                by = made.get("lines") or made.get("transcript") or "unknown"
                found.add("segments", segments, r, by)
            elif r.get("events"):
                spans = [{"label": SPEECH_EVENT, "start": e["start"], "end": e["end"]}
                         for e in r["events"]]  # fmt: skip
                found.add("speech", spans, r, "voice-activity")
        elif r.get("tags") and r["tags"] != ["silence"] and r.get("events"):
            spans = [{"label": r["tags"][0], "start": e["start"], "end": e["end"]}
                     for e in r["events"]]  # fmt: skip
            found.add("events", spans, r, made.get("tags") or "unknown")
    return found


def _annotators(names: set[str]) -> str:
    return "annotator:" + ",".join(sorted(names))


def transcript_segment(
    transcript: str, records: list[dict[str, Any]], found: Found
) -> list[dict[str, Any]]:
    """The given transcript as one segment over the speech the engine heard (none when it
    heard none), its descriptors measured on that speech and its rate on the given words: an
    ASR's words would put a guess in the segments and the caption next to the truth."""
    heard = [r for r in records if r["branch"] == "speech" and r.get("events")]
    if not heard or not transcript.strip():
        return []
    start = min(e["start"] for r in heard for e in r["events"])
    end = max(e["end"] for r in heard for e in r["events"])
    voiced = sum(r.get("active_seconds", 0.0) for r in heard)
    measured: dict[str, Any] = {"speaking_rate_wps": round(len(transcript.split()) /
                                                           max(voiced, 0.1), 2)}  # fmt: skip
    levels = [r["loudness_db"] for r in heard if "loudness_db" in r]
    if levels:
        measured["loudness_db"] = max(levels)
    segment = {"start": start, "end": end, "text": transcript.strip()}
    found.notes[id(segment)] = descriptors(measured)
    return [segment]


def clip_line(
    clip: dict[str, Any],
    records: list[dict[str, Any]],
    duration: float,
    vocabulary: Vocabulary | None = None,
) -> dict[str, Any]:
    """The clip in the dataset format: its given labels as they are, the missing ones from the
    records, a provenance per label field, and the records."""
    vocabulary = vocabulary if vocabulary is not None else Vocabulary()
    given = {k: clip[k] for k in LABEL_FIELDS if k in clip}
    earlier = clip.get("provenance") or {}
    provenance = {k: earlier.get(k, GIVEN) for k in given}
    line: dict[str, Any] = {"audio": clip["audio"],
                            "duration": clip.get("duration", round(duration, 3))}  # fmt: skip
    for key in ("id", "split", "language"):
        if key in clip:
            line[key] = clip[key]
    transcribed = "transcript" in given
    found = found_labels(records, transcribed)
    if "segments" not in given and transcribed:
        spoken = transcript_segment(given["transcript"], records, found)
        if spoken:
            line["segments"] = spoken
            provenance["segments"] = "derived:transcript"
    elif "segments" not in given and found.segments:
        line["segments"] = found.segments
        provenance["segments"] = _annotators(found.by["segments"])
    segments = given.get("segments", line.get("segments", []))
    if "events" not in given:
        timed_speech = "segments" in given or "segments" in line  # speech is told there
        events = found.events + ([] if timed_speech else found.speech)
        for event in events:
            event["label"] = vocabulary.name(event["label"])
        by = found.by["events"] | (set() if timed_speech else found.by["speech"])
        if events:
            line["events"] = sorted(events, key=lambda e: (e["start"], e["end"]))
            provenance["events"] = _annotators(by)
    events = given.get("events", line.get("events", []))
    if "caption" not in given and (segments or events or not given.get("transcript")):
        line["caption"] = timeline_caption(segments, events, found.notes)
        sources = [k for k in ("segments", "events") if k in given or k in line]
        provenance["caption"] = "derived:" + ",".join(sources or ["annotation"])
    line.update(given)
    line["provenance"] = {k: provenance[k] for k in LABEL_FIELDS if k in provenance}
    line["annotation"] = {"segments": records}
    return line
