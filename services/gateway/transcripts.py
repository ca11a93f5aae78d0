"""A job's transcript in the formats of OpenAI's transcription API: json, text, srt, vtt and
verbose_json (segments with start and end, from the model's time markers).

Subtitles need a start and an end for every cue; the model's items may lack either (a line
written without a time, a point in time). Gaps are filled from the neighbours, and a transcript
without any time marker is one cue over the whole clip.
"""

from __future__ import annotations

from typing import Any

Cue = tuple[float, float, str]


def cues(result: dict[str, Any], duration: float) -> list[Cue]:
    items = [s for s in result.get("segments") or [] if (s.get("text") or "").strip()]
    if not items:
        text = (result.get("text") or "").strip()
        return [(0.0, round(duration, 3), text)] if text else []
    out: list[Cue] = []
    for i, item in enumerate(items):
        start = item.get("start")
        if start is None:
            start = out[-1][1] if out else 0.0
        end = item.get("end")
        if end is None:
            later = [s["start"] for s in items[i + 1 :] if s.get("start") is not None]
            end = later[0] if later else duration
        end = max(end, start)
        out.append(
            (round(start, 3), round(min(end, max(duration, start)), 3), item["text"].strip())
        )
    return out


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt(items: list[Cue]) -> str:
    blocks = [
        f"{n}\n{_clock(start, ',')} --> {_clock(end, ',')}\n{text}\n"
        for n, (start, end, text) in enumerate(items, 1)
    ]
    return "\n".join(blocks)


def vtt(items: list[Cue]) -> str:
    blocks = [
        f"{_clock(start, '.')} --> {_clock(end, '.')}\n{text}\n" for start, end, text in items
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def verbose(result: dict[str, Any], duration: float, language: str | None) -> dict[str, Any]:
    return {
        "task": "transcribe",
        "language": language,
        "duration": round(duration, 3),
        "text": result.get("text") or "",
        "segments": [
            {"id": n, "start": start, "end": end, "text": text}
            for n, (start, end, text) in enumerate(cues(result, duration))
        ],
    }
