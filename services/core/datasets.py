"""The platform's dataset format: a JSONL manifest, one clip per line, with any labels a team
has (a transcript, timestamped segments, events, a caption, instruction/answer pairs) and a
split. The format is a JSON Schema (services/core/dataset.schema.json, shown in
docs/datasets.md); this module checks manifests against it and against what a schema cannot
say (times in order, inside the clip; ids unique; audio present).

The upstream fine-tuning format (OpenMOSS/MOSS-Audio finetune/FINETUNE.md: a `conversation` of
an audio message, an optional user text and the assistant's answer) is accepted too, as an
instruction pair (`from_upstream`).

Checking never stops at the first bad line: every line is checked, and each problem names its
line and field, so a team fixes a manifest in one pass.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).with_name("dataset.schema.json")
TIMED = ("segments", "events")
# The label families of a line: what a team knows about a clip. Annotation keeps each one a
# line has and fills in only the others (docs/annotation.md).
LABEL_FIELDS = ("transcript", "segments", "events", "caption", "instructions", "examples")
# What an annotation item carries from its manifest line besides its audio.
ITEM_FIELDS = ("id", "split", "language", "duration", "provenance", *LABEL_FIELDS)


@dataclass(frozen=True)
class Problem:
    line: int  # 1-based line of the manifest
    field: str  # a JSON path into the line, e.g. `segments[2].end`; "" for the whole line
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", field {self.field}" if self.field else "")
        return f"{where}: {self.message}"


@dataclass
class Checked:
    clips: list[dict[str, Any]] = field(default_factory=list)  # the good lines, parsed
    problems: list[Problem] = field(default_factory=list)
    lines: int = 0

    @property
    def bad_lines(self) -> int:
        return len({p.line for p in self.problems})


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


@cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def _path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def from_upstream(line: dict[str, Any], default_prompt: str = "") -> dict[str, Any]:
    """An upstream fine-tuning line -> our clip: its audio, and its prompt and answer as an
    instruction pair. Raises ValueError saying what is missing."""
    turns = line.get("conversation")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError("`conversation` must be a list of messages")
    audio = [t.get("content") for t in turns if t.get("message_type") == "audio"]
    texts = [t.get("content") for t in turns
             if t.get("role") == "user" and t.get("message_type") == "text"]  # fmt: skip
    answers = [t.get("content") for t in turns if t.get("role") == "assistant"]
    if len(audio) != 1 or not isinstance(audio[0], str) or not audio[0]:
        raise ValueError("the conversation needs exactly one audio message (a path)")
    if len(answers) != 1 or not isinstance(answers[0], str) or not answers[0].strip():
        raise ValueError("the conversation needs exactly one assistant answer")
    prompt = " ".join(t for t in texts if isinstance(t, str) and t.strip()) or default_prompt
    if not prompt:
        raise ValueError("no user text: give one in the line or a default prompt")
    return {"audio": audio[0], "instructions": [{"prompt": prompt, "answer": answers[0]}]}


def annotation_item(line: dict[str, Any], number: int, audio: str) -> dict[str, Any]:
    """A manifest line as an item to annotate: its `audio` (as the caller resolved it), its id
    (default: the line number) and every label and detail it has, so that none is lost."""
    item = {k: line[k] for k in ITEM_FIELDS if k in line}
    return {**item, "id": str(line.get("id") or number), "audio": audio}


def check_line(
    number: int,
    text: str,
    duration_of: Callable[[str], float | None] | None = None,
    default_prompt: str = "",
    need_label: bool = True,
):
    """The problems of one manifest line, and the clip when there are none (`need_label`
    False: a line without labels is good too, e.g. audio to annotate)."""
    try:
        clip = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [Problem(number, "", f"not JSON: {exc.msg} at column {exc.colno}")]
    if not isinstance(clip, dict):
        return None, [Problem(number, "", "a line must be a JSON object")]
    if "conversation" in clip:  # the upstream fine-tuning format
        try:
            clip = from_upstream(clip, default_prompt)
        except ValueError as exc:
            return None, [Problem(number, "conversation", str(exc))]
    problems = [
        Problem(number, _path(error.absolute_path), _message(error))
        for error in sorted(_validator().iter_errors(clip), key=lambda e: list(e.absolute_path))
        if need_label or error.validator != "anyOf" or error.absolute_path
    ]
    if problems:
        return None, problems
    duration = clip.get("duration")
    if duration is None and duration_of is not None:
        duration = duration_of(clip["audio"])
    for name in TIMED:
        for index, item in enumerate(clip.get(name, [])):
            where = f"{name}[{index}]"
            if item["end"] < item["start"]:
                problems.append(Problem(number, f"{where}.end", "ends before it starts"))
            elif duration is not None and item["end"] > duration + 0.05:
                problems.append(Problem(
                    number, f"{where}.end", f"{item['end']} s is past the clip's end ({duration} s)"
                ))  # fmt: skip
    return (None if problems else clip), problems


def _message(error) -> str:
    if error.validator == "anyOf" and not error.absolute_path:
        return "no label: give a transcript, segments, events, a caption or instructions"
    if error.validator == "additionalProperties":
        return error.message.replace("Additional properties are not allowed", "unknown field(s)")
    return error.message


def check_manifest(
    lines: Iterable[str],
    audio_exists: Callable[[str], bool] | None = None,
    duration_of: Callable[[str], float | None] | None = None,
    progress: Callable[[], None] | None = None,
    default_prompt: str = "",
) -> Checked:
    """Check every line; ids must be unique and (with `audio_exists`) the audio must exist."""
    checked, seen = Checked(), {}
    for number, text in enumerate(lines, 1):
        if progress is not None:
            progress()
        if not text.strip():
            continue
        checked.lines += 1
        clip, problems = check_line(number, text, duration_of, default_prompt)
        if clip is not None:
            clip.setdefault("id", str(number))
            clip.setdefault("split", "train")
            if clip["id"] in seen:
                problems.append(Problem(number, "id", f"repeats the id of line {seen[clip['id']]}"))
            elif audio_exists is not None and not audio_exists(clip["audio"]):
                problems.append(Problem(number, "audio", f"no such audio: {clip['audio']}"))
            seen.setdefault(clip["id"], number)
        checked.problems += problems
        if clip is not None and not problems:
            checked.clips.append(clip)
    return checked
