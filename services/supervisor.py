"""Restart what dies, with backoff: the local stack's answer to a crashed child.

One dead worker or gateway used to stop `mossctl up` altogether. Now each supervised child that
exits is started again after 1 s, then 2, 4, ... up to 60 s between attempts while it keeps
dying; a child that stays up for a minute is forgiven its history. Every exit and restart is
reported (the CLI prints the lines; logs stay in MOSS_HOME/logs). The supervisor never gives
up: a platform with a broken worker still accepts jobs, and they run once the worker is fixed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

BASE_DELAY_S = 1.0
MAX_DELAY_S = 60.0
STABLE_AFTER_S = 60.0


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    start: Callable[[], subprocess.Popen]
    restarts: int = 0  # in a row, without a stable minute in between
    started_at: float = field(default_factory=time.monotonic)
    restart_at: float | None = None  # when the pending restart is due


class Supervisor:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.children: dict[str, Child] = {}

    def add(self, name: str, process: subprocess.Popen, start: Callable[[], subprocess.Popen]):
        self.children[name] = Child(name, process, start, started_at=self.clock())

    def remove(self, name: str) -> None:
        self.children.pop(name, None)

    def check(self) -> list[str]:
        """Look at every child once: schedule restarts, run the due ones. Returns what happened."""
        now = self.clock()
        events: list[str] = []
        for child in list(self.children.values()):
            code = child.process.poll()
            if code is None:
                if child.restarts and now - child.started_at >= STABLE_AFTER_S:
                    child.restarts = 0
                continue
            if child.restart_at is None:
                delay = min(MAX_DELAY_S, BASE_DELAY_S * 2**child.restarts)
                child.restart_at = now + delay
                events.append(f"{child.name} exited with code {code}; restarting in {delay:g} s")
            elif now >= child.restart_at:
                try:
                    child.process = child.start()
                except OSError as exc:
                    child.restart_at = None
                    child.restarts += 1
                    events.append(f"{child.name} could not be restarted: {exc}")
                    continue
                child.restarts += 1
                child.started_at, child.restart_at = now, None
                events.append(f"{child.name} restarted (pid {child.process.pid})")
        return events
