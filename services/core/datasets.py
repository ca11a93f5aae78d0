"""The platform's dataset format: a JSONL manifest, one clip per line, with any labels a team
has (a transcript, timestamped segments, events, a caption, instruction/answer pairs) and a
split. The format is a JSON Schema (services/core/dataset.schema.json, shown in
docs/datasets.md); this module checks manifests against it and against what a schema cannot
say (times in order, inside the clip; ids unique; audio present).

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


def check_line(number: int, text: str, duration_of: Callable[[str], float | None] | None = None):
    """The problems of one manifest line, and the clip when there are none."""
    try:
        clip = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, [Problem(number, "", f"not JSON: {exc.msg} at column {exc.colno}")]
    if not isinstance(clip, dict):
        return None, [Problem(number, "", "a line must be a JSON object")]
    problems = [
        Problem(number, _path(error.absolute_path), _message(error))
        for error in sorted(_validator().iter_errors(clip), key=lambda e: list(e.absolute_path))
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
) -> Checked:
    """Check every line; ids must be unique and (with `audio_exists`) the audio must exist."""
    checked, seen = Checked(), {}
    for number, text in enumerate(lines, 1):
        if progress is not None:
            progress()
        if not text.strip():
            continue
        checked.lines += 1
        clip, problems = check_line(number, text, duration_of)
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
