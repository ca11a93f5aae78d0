"""Following a pipeline run while it runs: its log into the object store, its progress lines into
the run's record, and cancellation.

A local run is a child process (`python -m pipelines.runner`, kfp.local inside) in a session
of its own, so its process group holds it and every task process kfp.local starts. The worker
reads the child's output as it comes: each line goes to the run's log as is (appended to the
object store in numbered chunks, so the gateway can stream it from any machine), each
`MOSS_PROGRESS {json}` line (core.progress: the whole line, as a step prints it) and each of
kfp.local's own "Executing task" lines is merged into the run's record, and a cancel request
terminates the whole group.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from services.core import progress
from services.core.jobstate import Status
from services.core.jobstore import RunStore
from services.core.jobstore.runs import log_chunk_key
from services.core.storage import Storage

log = logging.getLogger("moss.pipelines")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local's own log lines ("%H:%M:%S.mmm - LEVEL - ..."), as each task starts and fails; a
# task's output comes indented (core.progress.KFP_LOCAL_INDENT), so it never reads as these
KFP_LOG = r"^\d\d:\d\d:\d\d(?:\.\d+)? - [A-Z]+ - "
KFP_TASK = re.compile(KFP_LOG + r"Executing task '([^']+)'\s*$")
KFP_FAILED = re.compile(KFP_LOG + r"Task '([^']+)' finished with status FAILURE")
RAISED = re.compile(r"^\s*([A-Za-z_][\w.]*(?:Error|Exception|Refused)): (.+)$")
FLUSH_S = 1.0  # the log and the progress reach the store at most this late
CANCEL_CHECK_S = 1.0
TOUCH_S = 10.0  # how often a followed run is marked as followed (the sweeper fails the others)
TERMINATE_GRACE_S = 10.0  # SIGTERM, then SIGKILL for what is left of the group
STRAGGLERS_S = 2.0  # processes a finished child left behind: stopped this long after it ended


class RunLog:
    """A run's log in the object store: what is written is appended as the next chunk at each
    flush (chunk 0, 1, ...), so a reader streams it in order and never sees a partial chunk."""

    def __init__(self, storage: Storage, folder: str) -> None:
        self.storage, self.folder = storage, folder
        self.chunks = 0
        self.pending = bytearray()
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            self.pending += data

    def line(self, text: str) -> None:
        self.write(text.rstrip("\n").encode() + b"\n")

    def flush(self) -> None:
        """Write what is pending as the next chunk; with the object store away, keep it for
        the next flush (the run goes on either way)."""
        with self.lock:
            if not self.pending:
                return
            try:
                self.storage.put_bytes(log_chunk_key(self.folder, self.chunks), bytes(self.pending))
            except Exception:
                log.warning("log of %s not written yet", self.folder, exc_info=True)
                return
            self.pending = bytearray()
            self.chunks += 1


@dataclass
class Outcome:
    status: Status
    error: dict[str, str] | None = None


def fields_of(line: str) -> dict[str, Any] | None:
    """What one output line says about the run: a progress object, or the kfp.local task that
    starts (its name is the pipeline step)."""
    found = progress.parse(line)
    if found is not None:
        return found
    task = KFP_TASK.match(ANSI.sub("", line))
    return {"pipeline_step": task.group(1)} if task else None


def failure_message(lines: list[str], code: int) -> str:
    """One line saying why a run failed: the last exception a step raised (not kfp.local's
    own "finished with status FAILURE" that follows it), and in which task."""
    plain = [ANSI.sub("", line) for line in lines]
    raised = [m for m in map(RAISED.match, plain) if m and "finished with status" not in m[2]]
    tasks = [m.group(1) for m in map(KFP_FAILED.search, plain) if m]
    where = f" (task {tasks[-1]})" if tasks else ""
    if raised:
        return f"{raised[-1].group(1)}: {raised[-1].group(2).strip()}{where}"
    return f"the pipeline exited with code {code}{where}"


def follow_child(
    process: subprocess.Popen, runs: RunStore, run_id: str, output: RunLog, flush_s: float = FLUSH_S
) -> Outcome:
    """Follow a started child to its end (or until its run is cancelled); the run's outcome.

    A reader thread takes the output line by line; this thread flushes the log and the merged
    progress every `flush_s`, and checks for a cancel request."""
    lines: queue.Queue[bytes | None] = queue.Queue()
    reader = threading.Thread(target=_read, args=(process.stdout, lines), daemon=True)
    reader.start()
    tail: deque[str] = deque(maxlen=200)
    pending: dict[str, Any] = {}
    cancelled, ended, exited = False, False, None
    flushed = checked = touched = time.monotonic()
    while not ended:
        taken, ended = _take(lines)
        for raw in taken:
            output.write(raw)
            text = raw.decode(errors="replace")
            tail.append(text)
            pending.update(fields_of(text) or {})
        now = time.monotonic()
        if not ended and process.poll() is not None:  # the child is gone, its output not yet:
            exited = exited or now  # a process it left holds it; that is not the run
            if not taken and now - exited >= STRAGGLERS_S:
                terminate_group(process, grace_s=STRAGGLERS_S)
                ended = True
        if ended or now - flushed >= flush_s:
            _flush(runs, run_id, output, pending)
            flushed = now
        if now - touched >= TOUCH_S:  # still followed: the sweeper spares it
            touched = now
            _quietly(runs.touch, run_id)
        if not cancelled and not ended and now - checked >= CANCEL_CHECK_S:
            checked = now
            if _quietly(runs.cancel_requested, run_id):
                cancelled = True
                output.line(f"moss: cancel requested; stopping process group {process.pid}")
                terminate_group(process)
    code = process.wait()
    reader.join(timeout=5)
    if cancelled:
        output.line("moss: the run was cancelled")
        _flush(runs, run_id, output, pending)
        return Outcome(Status.CANCELLED, {"code": "cancelled", "message": "cancelled on request"})
    if code == 0:
        return Outcome(Status.SUCCEEDED)
    return Outcome(Status.FAILED, {"code": "pipeline_failed", "message": failure_message(
        list(tail), code)})  # fmt: skip


def _take(lines: queue.Queue) -> tuple[list[bytes], bool]:
    """The lines there now (waiting a moment for the first), and whether the output ended."""
    taken: list[bytes] = []
    try:
        raw = lines.get(timeout=0.2)
        while raw is not None:
            taken.append(raw)
            raw = lines.get_nowait()
        return taken, True
    except queue.Empty:
        return taken, False


def _read(stream, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw)
    lines.put(None)


def _flush(runs: RunStore, run_id: str, output: RunLog, pending: dict[str, Any]) -> None:
    """The merged progress into the run's record, the output into the log; what could not be
    written (the database away a moment) waits for the next flush."""
    if pending:
        try:
            runs.add_progress(run_id, dict(pending))
            pending.clear()
        except Exception:
            log.warning("progress of run %s not recorded yet", run_id, exc_info=True)
    output.flush()


def _quietly(call, run_id: str) -> bool:
    """A store call of the follow loop; the database away a moment: False, asked again soon."""
    try:
        return bool(call(run_id))
    except Exception:
        return False


def terminate_group(process: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S) -> None:
    """SIGTERM to the child's whole process group (kfp.local's task processes too), then
    SIGKILL to whatever is left of it after `grace_s`."""
    group = process.pid  # started with start_new_session: its own group
    _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        process.poll()  # reap the leader, or the group never looks empty
        if not _group_alive(group):
            return
        time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    """Whether a process of the group still runs. Zombies do not count: an orphaned task
    process is reparented to PID 1, which in a container may never reap it."""
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return bool(group_members(group)) if os.path.isdir("/proc") else True


def group_members(group: int) -> list[int]:
    """The live (not zombie) processes of a process group, read from /proc."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as handle:
                fields = handle.read().rsplit(") ", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":  # state, ppid, pgrp, ...
            found.append(int(entry.name))
    return found
