"""The job shapes docs/api.md documents, read from its JSON examples (so a shape documented
later is checked by itself), plus the shapes it has no example of; and what showing a job must
contain, for the CLI's renderers and for the web page alike."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

API_DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
# What a renderer that fell through would show: Python's and JavaScript's empty values, and the
# page's old placeholder for audio it could not draw.
NEVER_SHOWN = ("None", "null", "undefined", "NaN", "[object Object]", "cannot draw")


def documented_blocks() -> list[Any]:
    """Every ```json block of docs/api.md, parsed; a fragment (`"webhook": {...}`) as an object."""
    blocks = []
    for block in re.findall(r"```json\n(.*?)```", API_DOC.read_text(encoding="utf-8"), re.S):
        try:
            blocks.append(json.loads(block))
        except ValueError:
            blocks.append(json.loads("{" + block + "}"))
    return blocks


def documented_jobs() -> list[dict[str, Any]]:
    """The documented examples that are jobs (GET /v1/jobs/{id}'s shape)."""
    return [
        b
        for b in documented_blocks()
        if isinstance(b, dict) and {"id", "status", "task"} <= b.keys()
    ]


def all_shapes() -> dict[str, dict[str, Any]]:
    """Every shape by a name for test ids: the documented ones, then those made from them."""
    jobs = documented_jobs()
    shapes = {f"doc-{n}-{j['task']}-{j['status']}": j for n, j in enumerate(jobs)}
    base = next(j for j in jobs if (j.get("result") or {}).get("segments"))
    running = copy.deepcopy(base) | {"status": "running", "stage": "generate", "progress": 0.4,
                                      "result": None}  # fmt: skip
    purged = copy.deepcopy(base) | {"result": None, "purged_at": "2026-01-02T03:04:05Z"}
    caption = copy.deepcopy(base) | {"task": "caption"}
    caption["result"] |= {"text": "A low beep at 1.2 s, then [bold]applause[/] [/].",
                          "segments": None, "finish_reason": "length"}  # fmt: skip
    shapes |= {"running": running, "purged": purged, "caption-with-brackets": caption}
    return shapes


def must_show(job: dict[str, Any]) -> list[str]:
    """The texts a rendering of this job has to contain."""
    status, result = job["status"], job.get("result")
    if status in ("failed", "cancelled"):
        error = job.get("error") or {}
        return [s for s in (error.get("code"), error.get("message")) if s]
    if status != "succeeded" or result is None:
        return []  # where it stands / purged: checked by the caller's own words
    if job["task"] == "annotate":
        datasets = [result[k]["dataset"] for k in ("captions", "sft") if result.get(k)]
        failures = [f[k] for f in result.get("failures") or [] for k in ("id", "code")]
        return [*datasets, *failures, str(result["annotated"]), str(result["items"])]
    texts = [s["text"] for s in result.get("segments") or []] or [result["text"]]
    return [*texts, *([result["thinking"]] if result.get("thinking") else [])]


def check_shapes_documented() -> None:
    """docs/api.md shows each shape the issue named (so the renderers are tested on them)."""
    jobs = documented_jobs()
    segments = [s for j in jobs for s in (j.get("result") or {}).get("segments") or []]
    assert any(s.get("flag") == "no_timestamp" and s["start"] is None for s in segments)
    assert any((j.get("result") or {}).get("thinking") for j in jobs)
    assert any(j["task"] == "annotate" and j["status"] == "succeeded" for j in jobs)
    assert {"failed", "cancelled"} <= {j["status"] for j in jobs}
