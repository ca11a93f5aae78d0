"""`mossctl up`: the whole platform on this machine, supervised until Ctrl-C."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from ..core.bootstrap import clear_status, describe, parse_log, write_status
from ..core.settings import get_settings
from ..stack import BOOTSTRAP_MODEL, STACK_QUEUES
from .common import err, fail, out

app = typer.Typer()


@app.command()
def up() -> None:
    """Start the whole platform locally (Valkey, gateway, workers); Ctrl-C stops it."""
    from ..stack import LocalStack

    settings = get_settings()
    stack = LocalStack(settings)
    try:
        with err.status("Preparing state under " + str(settings.home.resolve())):
            stack.prepare()
            stack.start_redis()
            stack.start_mlflow()
            stack.choose_default_model()
        training = stack.needs_training()
        if training:  # the API comes up first: jobs are accepted and wait for the model
            write_status(settings.home, {"state": "training", "model": BOOTSTRAP_MODEL})
        with err.status("Starting the gateway"):
            stack.start_gateway()
        if training:
            out.print(f"the API is up at [bold]{stack.url}[/] (admin API key: {stack.api_key});"
                      " jobs submitted now wait for the model being trained")  # fmt: skip
            _bootstrap(stack, settings)
        with err.status("Starting the workers"):
            for queue in STACK_QUEUES:
                stack.start_worker(queue)
            stack.wait_ready()
    except (OSError, TimeoutError, RuntimeError) as exc:
        clear_status(settings.home)
        stack.stop()
        fail(f"the stack did not start: {exc} (logs: {stack.logs})", 1)
    except KeyboardInterrupt:
        clear_status(settings.home)
        stack.stop()
        raise typer.Exit(130) from None
    out.print(f"serving model: {_served(stack)}")
    out.print(f"MOSS-Audio platform is up at [bold]{stack.url}[/] (API docs: {stack.url}/docs)")
    out.print(f"admin API key: {stack.api_key}")
    out.print(f"try: mossctl submit clip.wav --task caption     (logs: {stack.logs}; Ctrl-C stops)")

    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    # Handle SIGINT ourselves too: a shell that starts `up` in the background ignores it.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        time.sleep(0.5)
        for event in stack.supervise():  # a child that died is restarted, with backoff
            err.print(f"[yellow]supervisor:[/] {event} (logs: {stack.logs})")
    with err.status("Stopping"):
        stack.stop()
    err.print("stopped")


def _served(stack) -> str:
    """`name@alias vN (trained for: ...)`: what a job without `model` will be answered by."""
    from ..core.lifecycle import list_models
    from ..core.modelref import DEFAULT_ALIAS, parse

    try:
        entries = list_models(stack.settings.model_copy(update={"mlflow_uri": stack.mlflow_uri}))
    except Exception:  # the registry briefly away: the name is still true
        return stack.default_model
    default = parse(stack.default_model)
    for entry in entries:
        if entry["name"] != default.name:
            continue
        version = entry.get("aliases", {}).get(default.alias or DEFAULT_ALIAS)
        details = next((v for v in entry.get("versions", []) if v["version"] == version), {})
        trained_for = details.get("trained_for") or entry.get("trained_for") or "not recorded"
        label = f"{stack.default_model} v{version}" if version else stack.default_model
        return f"{label} (trained for: {trained_for})"
    return stack.default_model


def _bootstrap(stack, settings) -> None:
    """No model yet: train the tiny variant with the local SFT pipeline, register, promote."""
    err.print(
        "[yellow]note:[/] no trained model yet. Training the [bold]tiny[/] variant on the "
        f"generated event dataset with the local SFT pipeline (kfp.local; at most "
        f"{settings.bootstrap_steps} steps or {settings.bootstrap_minutes:g} minutes), then "
        "registering it in MLflow and promoting it to production. This happens once."
    )
    process = stack.train_bootstrap_model(settings.bootstrap_steps, settings.bootstrap_minutes)
    log = stack.logs / "bootstrap-sft.log"
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    started = time.monotonic()
    try:
        with Progress(*columns, console=err) as progress:
            task = progress.add_task("preparing data", total=None, detail="")
            while process.poll() is None:
                time.sleep(1)
                status = _training_status(log, started, settings.bootstrap_minutes)
                write_status(settings.home, status)
                detail = describe(status).split(": ", 1)[-1] if "step" in status else ""
                progress.update(
                    task,
                    description=status["phase"],
                    completed=status.get("step", 0),
                    total=status.get("steps"),
                    detail=status.get("evaluation") or detail,
                )
            final = _training_status(log, started, settings.bootstrap_minutes)
        if final.get("evaluation"):
            err.print(f"evaluation of the trained model: {final['evaluation']}")
    finally:
        if process.poll() is None:  # interrupted: stop the pipeline and its task processes
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
        clear_status(settings.home)
    if process.returncode != 0:
        raise RuntimeError(f"the bootstrap pipeline failed ({_last_error(log)}); see {log}")
    if stack.needs_training():
        raise RuntimeError(f"the trained model was not promoted to production; see {log}")


def _training_status(log: Path, started: float, max_minutes: float) -> dict:
    """The training's progress from its log, with an ETA (at most the time cap left)."""
    try:
        progress = parse_log(log.read_text(errors="replace"))
    except OSError:
        progress = {"phase": "preparing data"}
    elapsed = time.monotonic() - started
    eta = None
    if progress.get("step") and progress["phase"] == "training":
        eta = elapsed * (progress["steps"] - progress["step"]) / progress["step"]
        eta = max(0.0, min(eta, max_minutes * 60 - elapsed))
    return {"state": "training", "model": BOOTSTRAP_MODEL, **progress, "eta_s": eta}


def _last_error(path: Path) -> str:
    """The last line of a log that names an error (ANSI colours removed)."""
    import re

    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))
    except OSError:
        return "no log"
    errors = [ln.strip() for ln in text.splitlines() if re.search(r"Error|Refused|Exception", ln)]
    return errors[-1] if errors else "no error line in the log"
