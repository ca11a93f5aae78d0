"""One unified, time-stamped caption per clip from the branch records, and the clip's line in
the platform's dataset format (docs/datasets.md):

    0.0-3.2 s: someone says "open the red door" (2.5 words/s, moderately loud);
    3.2-5.0 s: a noise burst; 5.0-9.0 s: loud tonal music at about 120 BPM in C major.

Speech becomes timed `segments` (from the transcript's lines, shifted to clip time, or the
segment's own span), other sounds timed `events` (the first tag, over the events the segmenter
found), the unified text the `caption`; every branch record is kept under `annotation`.
"""

from __future__ import annotations

from typing import Any


def describe(record: dict[str, Any]) -> str:
    """One record in words."""
    if record["branch"] == "speech":
        said = record.get("transcript", "").strip()
        details = []
        if "speaking_rate_wps" in record:
            details.append(f"{record['speaking_rate_wps']:g} words/s")
        if "loudness_db" in record:
            db = record["loudness_db"]
            details.append("loud" if db > -12 else "quiet" if db < -30 else "moderately loud")
        text = f'someone says "{said}"' if said else "someone speaks"
        return text + (f" ({', '.join(details)})" if details else "")
    return record.get("caption") or ", ".join(record.get("tags", [])) or record["branch"]


def unified_caption(records: list[dict[str, Any]]) -> str:
    parts = [
        f"{r['start']:.1f}-{r['end']:.1f} s: {describe(r)}"
        for r in records
        if r.get("events") and r.get("tags") != ["silence"]
    ]
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
    if record.get("transcript"):
        first, last = record["events"][0]["start"], record["events"][-1]["end"]
        return [{"start": first, "end": last, "text": record["transcript"]}]
    return []


def clip_line(clip: dict[str, Any], records: list[dict[str, Any]], duration: float) -> dict:
    """The clip in the dataset format: caption, segments, events, and the records."""
    line: dict[str, Any] = {"audio": clip["audio"], "duration": round(duration, 3),
                            "caption": unified_caption(records)}  # fmt: skip
    for key in ("id", "split", "language"):
        if key in clip:
            line[key] = clip[key]
    segments = [s for r in records if r["branch"] == "speech" for s in speech_segments(r)]
    events = [
        {"label": r["tags"][0], "start": e["start"], "end": e["end"]}
        for r in records
        if r["branch"] != "speech" and r.get("tags") and r["tags"] != ["silence"]
        for e in r.get("events", [])
    ]
    if segments:
        line["segments"] = segments
    if events:
        line["events"] = events
    line["annotation"] = {"segments": records}
    return line
