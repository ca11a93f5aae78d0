"""How mossctl shows a job to people: one function per result shape that docs/api.md documents
(a job still under way, a failed or cancelled one, a purged result, an annotation outcome, a
Thinking answer, segments with and without times, a plain answer).

`submit` (at the end) and `jobs get` both go through `show_job`, so the two never disagree;
`--json` bypasses all of this and prints the job as the API sent it. The answer goes to stdout
(a pipe gets only the answer); what is about the answer (the thinking, which model answered, a
cut answer) goes to stderr. Everything the model or a user wrote is printed escaped: an answer
holding `[bold]` or `[/]` is text, not rich markup.
"""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from ..core.jobstate import ANNOTATION_TASK, FINAL, Status
from .common import err, out

TIMED_WIDTH = 21  # "[    0.00 -     4.20]": untimed lines keep the same column


def show_job(job: dict[str, Any]) -> None:
    """Print the job by its shape: where it stands, how it ended, or its result."""
    status = job.get("status")
    if status not in FINAL:
        out.print(pending_line(job), highlight=False)
    elif status != Status.SUCCEEDED:
        out.print(ended_line(job), highlight=False)
    elif job.get("result") is None:
        out.print(purged_line(job), highlight=False)
    elif job.get("task") == ANNOTATION_TASK:
        show_annotation(job["result"])
    else:
        show_answer(job["result"])


def pending_line(job: dict[str, Any]) -> str:
    """A job still queued or running: its status, stage and progress."""
    progress = job.get("progress") or 0.0
    return f"job {job['id']} {job['status']} ({job.get('stage') or 'queued'}), {progress:.0%} done"


def ended_line(job: dict[str, Any]) -> str:
    """A failed or cancelled job: its status and, when it has one, its error code and message."""
    line = f"job {job['id']} {job['status']}"
    error = job.get("error")
    if error:
        line += ": " + escape(f"{error.get('message') or ''} [{error.get('code') or 'error'}]")
    if job.get("purged_at"):
        line += " (purged)"
    return line


def purged_line(job: dict[str, Any]) -> str:
    """A succeeded job whose result is gone (DELETE ?purge=true or MOSS_RETENTION_DAYS)."""
    when = job.get("purged_at") or "an unknown time"
    return f"job {job['id']} succeeded; its audio and result were purged ({str(when)[:19]})"


def show_answer(result: dict[str, Any]) -> None:
    """A model's answer: the thinking (dim, apart), then the segments or the text."""
    if result.get("thinking"):
        show_thinking(result["thinking"])
    segments = result.get("segments")
    if segments:
        for segment in segments:
            out.print(segment_line(segment), highlight=False)
    elif (result.get("text") or "").strip():
        out.print(escape(result["text"]), highlight=False)
    else:
        err.print("[dim](the model's answer is empty)[/]")
    if result.get("finish_reason") == "length":
        err.print("[yellow]the answer ran into max_new_tokens and is cut there[/]")
    if result.get("model"):
        err.print(f"[dim]{escape(answered_by(result['model']))}[/]", highlight=False)


def show_thinking(thinking: str) -> None:
    """A Thinking model's reasoning, dim, on stderr: the answer alone goes down a pipe."""
    err.print("[dim]thinking:[/]")
    err.print(f"[dim]{escape(thinking.strip())}[/]", highlight=False)
    err.print()


def segment_line(segment: dict[str, Any]) -> str:
    """`[start - end] text`; a line without a time keeps the column and says so; a point in
    time has no end; a span that ends before it starts is shown as written, flagged."""
    start, end = segment.get("start"), segment.get("end")
    text = escape(segment.get("text") or "")
    if start is None:
        head = "[" + "--".center(TIMED_WIDTH - 2) + "]"
    else:
        head = f"[{start:8.2f} - {'--' if end is None else f'{end:.2f}':>8}]"
    flag = segment.get("flag")
    note = f"  [dim]({flag.replace('_', ' ')})[/]" if flag else ""
    return f"{escape(head)} {text}{note}"


def answered_by(model: dict[str, Any]) -> str:
    """Which model answered and what it was trained for (`result.model`)."""
    line = f"answered by {model.get('ref') or model.get('name') or 'an unnamed model'}"
    if model.get("registry_version"):
        line += f" (registry version {model['registry_version']})"
    if model.get("trained_for"):
        line += f"; trained for {model['trained_for']}"
    return line


def show_annotation(result: dict[str, Any]) -> None:
    """An annotation job: the counts, the two datasets it made, and the items that failed."""
    seconds = f" in {result['seconds']:.0f} s" if result.get("seconds") is not None else ""
    out.print(
        f"annotated {result.get('annotated', 0)} of {result.get('items', 0)} clips "
        f"({result.get('failed', 0)} failed){seconds}",
        highlight=False,
    )
    for kind, what in (("captions", "unified captions"), ("sft", "instruction pairs")):
        if result.get(kind):
            out.print(dataset_line(result[kind], what), highlight=False)
    if not (result.get("captions") or result.get("sft")):
        out.print("no dataset was made: no item could be annotated", highlight=False)
    if result.get("labels"):
        out.print(escape(labels_line(result["labels"])), highlight=False)
    show_failures(result)


def labels_line(labels: dict[str, Any]) -> str:
    """How the engine's event labels were named (docs/annotation.md, "Vocabulary")."""
    where = f"the vocabulary of {labels['vocabulary']}" if labels.get("vocabulary") else (
        "no vocabulary (the served model records none)")  # fmt: skip
    mapped = ", ".join(f"{m['from']} -> {m['to']} ({m['events']})" for m in labels["mapped"])
    unmapped = ", ".join(f"{k} ({n})" for k, n in labels["unmapped"].items())
    return (f"event labels: {where}; label map: {labels.get('label_map', 0)} entries; "
            f"mapped: {mapped or 'none'}; kept as found: {unmapped or 'none'}")  # fmt: skip


def dataset_line(dataset: dict[str, Any], what: str) -> str:
    """One dataset an annotation job made, and its manifest key (what a pipeline trains on)."""
    return (
        f"dataset {escape(dataset['dataset'])}: {dataset.get('clips', 0)} clips of {what} "
        f"(manifest {escape(dataset.get('manifest') or '')})"
    )


def show_failures(result: dict[str, Any]) -> None:
    """The failed items the result lists (the first 20), and where the rest are: on stderr,
    like the bad lines of `datasets validate` (problems there, the summary on stdout)."""
    failures = result.get("failures") or []
    for failure in failures:
        item = escape(str(failure.get("id") or "(an item without id)"))
        message = escape(f"{failure.get('message') or ''} [{failure.get('code') or 'error'}]")
        err.print(f"[red]failed[/] {item}: {message}", highlight=False)
    more = (result.get("failed") or 0) - len(failures)
    if more > 0:
        where = escape(result.get("failures_key") or "the object store")
        err.print(f"... and {more} more failed items (all of them: {where})", highlight=False)
