"""The first run's training, as the rest of the local stack sees it: `mossctl up` writes its
progress to MOSS_HOME/bootstrap.json while it trains the bootstrap model, and the gateway
(same machine, same MOSS_HOME) reads it to say so in /readyz and to accept jobs for the model
being trained: they wait in the queue and run once the workers start on the trained model."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

STEP = re.compile(r"step (\d+)/(\d+) loss ([0-9.]+)")


def status_path(home: Path) -> Path:
    return home.resolve() / "bootstrap.json"


def read_status(home: Path) -> dict[str, Any] | None:
    """The training in progress, or None (none, or finished)."""
    try:
        status = json.loads(status_path(home).read_text())
    except (OSError, ValueError):
        return None
    return status if status.get("state") == "training" else None


def write_status(home: Path, status: dict[str, Any]) -> None:
    path = status_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bootstrap-")
    with os.fdopen(fd, "w") as handle:
        json.dump(status, handle)
    os.replace(tmp, path)


def clear_status(home: Path) -> None:
    status_path(home).unlink(missing_ok=True)


def parse_log(text: str) -> dict[str, Any]:
    """What the training log says so far: phase, step, steps, loss, evaluation."""
    progress: dict[str, Any] = {"phase": "preparing data"}
    for line in text.splitlines():
        line = line.strip()  # kfp.local indents what its tasks print
        if found := STEP.search(line):
            step, steps, loss = found.groups()
            progress.update(phase="training", step=int(step), steps=int(steps), loss=float(loss))
        elif "evaluating on the held-out split" in line:
            progress["phase"] = "evaluating"
        elif line.startswith("evaluation: "):
            progress.update(phase="registering", evaluation=line.removeprefix("evaluation: "))
    return progress


def describe(status: dict[str, Any]) -> str:
    """One line for people: `training moss-audio-tiny-instruct: step 300/2000, loss 1.234, ...`"""
    text = f"{status.get('phase', 'training')} {status.get('model', 'the first model')}"
    if "step" in status:
        text += f": step {status['step']}/{status['steps']}, loss {status['loss']:.3f}"
    if status.get("eta_s") is not None:
        text += f", about {max(1, round(status['eta_s'] / 60))} min left"
    if status.get("evaluation"):
        text += f"; evaluation {status['evaluation']}"
    return text
