"""Instruction pairs from labels: the one place that turns what is known about a clip (a
transcript, timestamped segments, sound events, a caption, free instructions) into the
examples the trainer shows the model and the evaluator asks it.

The generated bootstrap dataset, the annotation engine's SFT manifests and a team's own
manifest all go through `build_examples`, so every task the model serves is trained with the
same wording and answers that follow from the labels: times come from the segments and
events, counts from the events, transcripts from the speech.

Each example is a dict `{task, kind, prompt, answer}`: the task picks the instruction
(model/tasks.py; an empty prompt is the task's own instruction), the kind names the question,
and evaluation scores each kind by its family (FAMILIES).
"""

from __future__ import annotations

import math
import random
from typing import Any

# The kinds of example, by the family of labels they come from. A manifest trains and is
# scored on the families it has; a family it lacks is skipped, never an error.
FAMILIES: dict[str, tuple[str, ...]] = {
    "speech": ("transcript", "segments"),
    "events": ("timestamps", "event_at", "event_start", "count"),
    "caption": ("caption",),
    "instructions": ("instruction",),
}
KINDS = tuple(kind for kinds in FAMILIES.values() for kind in kinds)
FAMILY_OF = {kind: family for family, kinds in FAMILIES.items() for kind in kinds}


def article(label: str) -> str:
    return f"{'an' if label[:1].lower() in 'aeiou' else 'a'} {label}"


def event_caption(events: list[dict[str, Any]]) -> str:
    """'A low beep at 1.2 s, then a noise burst at 4.0 s.': a caption that only events give."""
    parts = [f"{article(e['label'])} at {e['start']:.1f} s" for e in events]
    text = parts[0] + "".join(f", then {p}" for p in parts[1:])
    return text[0].upper() + text[1:] + "."


def timestamp_lines(items: list[dict[str, Any]], key: str) -> str:
    """One `[start-end] text` line per item: the format the services parse (model.timestamps)."""
    return "\n".join(f"[{i['start']:.2f}-{i['end']:.2f}] {i[key]}" for i in items)


def transcript_of(clip: dict[str, Any]) -> str:
    if clip.get("transcript"):
        return clip["transcript"].strip()
    segments = sorted(clip.get("segments", []), key=lambda s: s["start"])
    return " ".join(s["text"].strip() for s in segments)


def _example(task: str, kind: str, answer: str, prompt: str = "") -> dict[str, str]:
    return {"task": task, "kind": kind, "prompt": prompt, "answer": answer}


def _event_questions(events: list[dict[str, Any]], rng: random.Random) -> list[dict[str, str]]:
    out = []
    for event in events:  # "what happens at t s?" for every event with a whole second inside
        first, last = math.ceil(event["start"]), math.floor(event["end"])
        if first <= last:
            moment = rng.randint(first, last)
            out.append(_example("ask", "event_at", article(event["label"]),
                                f"What happens at {moment} s?"))  # fmt: skip
    event = events[rng.randrange(len(events))]
    same = [e for e in events if e["label"] == event["label"]]
    which = "first " if len(same) > 1 else ""
    out.append(_example("ask", "event_start", f"{same[0]['start']:.1f}",
                        f"When does the {which}{event['label']} start?"))  # fmt: skip
    label = events[rng.randrange(len(events))]["label"]
    out.append(_example("ask", "count", str(len([e for e in events if e["label"] == label])),
                        f"How many {label} events are there?"))  # fmt: skip
    return out


def build_examples(clip: dict[str, Any], rng: random.Random) -> list[dict[str, str]]:
    """Every example the clip's labels support (a clip's own `examples` are used as they are).

    Timestamped transcription means speech when the clip has segments, and the event list
    otherwise, so one prompt never has two answers for the same audio.
    """
    if clip.get("examples"):
        return [dict(e, prompt=e.get("prompt", "")) for e in clip["examples"]]
    out: list[dict[str, str]] = []
    transcript = transcript_of(clip)
    if transcript:
        out.append(_example("transcribe", "transcript", transcript))
    segments = sorted(clip.get("segments", []), key=lambda s: s["start"])
    if segments:
        out.append(_example("transcribe_timestamps", "segments", timestamp_lines(segments, "text")))
    events = sorted(clip.get("events", []), key=lambda e: e["start"])
    if events:
        if not segments:
            out.append(
                _example("transcribe_timestamps", "timestamps", timestamp_lines(events, "label"))
            )
        out += _event_questions(events, rng)
    caption = clip.get("caption") or (event_caption(events) if events else "")
    if caption:
        out.append(_example("caption", "caption", caption))
    for pair in clip.get("instructions", []):
        out.append(_example("ask", "instruction", pair["answer"], pair["prompt"]))
    return out


def families_of(clips: list[dict[str, Any]], rng_seed: int = 0) -> set[str]:
    """The label families a set of clips has (what training and evaluation will cover)."""
    rng = random.Random(rng_seed)
    return {FAMILY_OF.get(e["kind"], "instructions") for c in clips for e in build_examples(c, rng)}
