"""The local stack's supervisor: real child processes, a controlled clock."""

from __future__ import annotations

import subprocess
import sys

from services.supervisor import MAX_DELAY_S, STABLE_AFTER_S, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def dying() -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    return process


def sleeping() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_child_that_keeps_dying_is_restarted_with_doubling_delays() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    starts: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        starts.append(dying())
        return starts[-1]

    supervisor.add("worker", dying(), start)
    delays = []
    for _ in range(8):
        events = supervisor.check()
        assert len(events) == 1 and "exited with code 3" in events[0]
        delay = float(events[0].split("restarting in ")[1].split(" s")[0])
        delays.append(delay)
        clock.now += delay - 0.01
        assert supervisor.check() == []  # not yet due
        clock.now += 0.01
        assert "worker restarted" in supervisor.check()[0]
    assert delays == [1, 2, 4, 8, 16, 32, MAX_DELAY_S, MAX_DELAY_S]
    assert len(starts) == 8


def test_a_child_that_stays_up_is_forgiven_and_stopped_children_are_left_alone() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    alive = sleeping()
    try:
        supervisor.add("gateway", dying(), lambda: alive)
        supervisor.check()
        clock.now += 1
        supervisor.check()
        assert supervisor.children["gateway"].restarts == 1
        clock.now += STABLE_AFTER_S
        assert supervisor.check() == []
        assert supervisor.children["gateway"].restarts == 0
        supervisor.remove("gateway")
        alive.kill()
        alive.wait()
        assert supervisor.check() == []
    finally:
        alive.kill()
        alive.wait()
