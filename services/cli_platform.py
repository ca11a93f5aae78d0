"""`mossctl up | submit | jobs | keys`: run the local stack and talk to any deployment's API."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from .client import Client, ClientError, default_key, default_url
from .settings import get_settings

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
jobs_app = typer.Typer(help="Read, list and cancel jobs.", no_args_is_help=True)
keys_app = typer.Typer(help="Create, list and revoke API keys (admin).", no_args_is_help=True)
FINAL = ("succeeded", "failed", "cancelled")


def _fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def _client() -> Client:
    settings = get_settings()
    return Client(default_url(settings), default_key(settings))


def _guard(call, *args, **kwargs):
    try:
        return call(*args, **kwargs)
    except ClientError as exc:
        _fail(exc.message + (f" [{exc.code}]" if exc.status else ""), 1 if exc.status >= 500 else 2)


def up() -> None:
    """Start the whole platform locally (Valkey, gateway, workers); Ctrl-C stops it."""
    from .stack import LocalStack  # heavy imports only for `up`

    settings = get_settings()
    stack = LocalStack(settings)
    try:
        with err.status("Preparing state under " + str(settings.home.resolve())):
            stack.prepare()
            stack.start_redis()
            stack.start_mlflow()
            stack.choose_default_model()
        if stack.needs_training():
            _bootstrap(stack, settings)
        with err.status("Starting the gateway and the workers"):
            stack.start_gateway()
            for queue in ("encode", "generate"):
                stack.start_worker(queue)
            stack.wait_ready()
    except (OSError, TimeoutError, RuntimeError) as exc:
        stack.stop()
        _fail(f"the stack did not start: {exc} (logs: {stack.logs})", 1)
    except KeyboardInterrupt:
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
    from .lifecycle import list_models

    try:
        entries = list_models(stack.settings.model_copy(update={"mlflow_uri": stack.mlflow_uri}))
    except Exception:  # the registry briefly away: the name is still true
        return stack.default_model
    name, _, alias = stack.default_model.partition("@")
    for entry in entries:
        if entry["name"] != name:
            continue
        version = entry.get("aliases", {}).get(alias or "production")
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
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    try:
        with Progress(*columns, console=err, transient=True) as progress:
            task = progress.add_task("training tiny", total=None)
            while process.poll() is None:
                time.sleep(1)
                progress.update(task, description=f"training tiny: {_last_line(log)}"[:100])
    finally:
        if process.poll() is None:  # interrupted: stop the pipeline and its task processes
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)
    if process.returncode != 0:
        raise RuntimeError(f"the bootstrap pipeline failed ({_last_error(log)}); see {log}")
    if stack.needs_training():
        raise RuntimeError(f"the trained model was not promoted to production; see {log}")


def _last_error(path: Path) -> str:
    """The last line of a log that names an error (ANSI colours removed)."""
    import re

    try:
        text = re.sub(r"\x1b\[[0-9;]*m", "", path.read_text(errors="replace"))
    except OSError:
        return "no log"
    errors = [ln.strip() for ln in text.splitlines() if re.search(r"Error|Refused|Exception", ln)]
    return errors[-1] if errors else "no error line in the log"


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def submit(
    file: Annotated[Path, typer.Argument(help="Audio file to upload.")],
    task: Annotated[
        str, typer.Option(help="transcribe, transcribe_timestamps, caption, ask, chat")
    ] = "caption",
    prompt: Annotated[str | None, typer.Option(help="Question or instruction (ask/chat).")] = None,
    model: Annotated[str | None, typer.Option(help="`name` or `name@alias`.")] = None,
    max_new_tokens: Annotated[int | None, typer.Option()] = None,
    temperature: Annotated[float, typer.Option()] = 0.0,
    sampling: Annotated[
        str, typer.Option(help="greedy, or model: the checkpoint's own sampling defaults.")
    ] = "greedy",
    wait: Annotated[bool, typer.Option(help="Wait for the result, with a progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Upload audio as a job; wait and print the result (or --no-wait to print the id)."""
    if not file.is_file():
        _fail(f"no such file: {file}")
    client = _client()
    job = _guard(
        client.submit,
        file,
        task,
        prompt=prompt,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        sampling=sampling,
    )
    if not wait:
        out.print(job["id"])
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task(f"job {job['id'][:8]} queued", total=1.0)
        while job["status"] not in FINAL:
            job = _guard(client.job, job["id"], wait=0.5)  # long poll: no busy waiting
            progress.update(
                bar,
                completed=job["progress"],
                description=f"job {job['id'][:8]} {job['status']} ({job['stage']})",
            )
    _print_job(job, as_json)
    if job["status"] != "succeeded":
        raise typer.Exit(1)


def _print_job(job: dict, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(job, indent=2, ensure_ascii=False) + "\n")
        return
    if job["status"] == "failed":
        _fail(f"job {job['id']} failed: {job['error']['message']} [{job['error']['code']}]", 1)
    if job["status"] == "cancelled":
        err.print(f"job {job['id']} was cancelled")
        return
    result = job.get("result") or {}
    if result.get("thinking"):
        err.print(f"[dim]thinking: {result['thinking']}[/]", highlight=False)
    for segment in result.get("segments") or []:
        out.print(
            f"[{segment['start']:8.2f} - {segment['end']:8.2f}] {segment['text']}", highlight=False
        )
    if not result.get("segments"):
        sys.stdout.write((result.get("text") or "") + "\n")


@jobs_app.command("get")
def jobs_get(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one job (its result when it has one)."""
    job = _guard(_client().job, job_id)
    if as_json or job["status"] not in FINAL:
        sys.stdout.write(json.dumps(job, indent=2, ensure_ascii=False) + "\n")
    else:
        _print_job(job, False)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Your jobs, newest first."""
    page = _guard(_client().jobs, status, limit, offset)
    table = Table("id", "status", "stage", "progress", "task", "model", "created")
    for job in page["jobs"]:
        table.add_row(
            job["id"],
            job["status"],
            job["stage"],
            f"{job['progress']:.0%}",
            job["task"],
            job["model"],
            job["created_at"][:19],
        )
    out.print(table)
    err.print(f"{len(page['jobs'])} of {page['total']} (offset {offset})")


@jobs_app.command("cancel")
def jobs_cancel(job_id: str) -> None:
    """Cancel a queued or running job."""
    job = _guard(_client().cancel, job_id)
    out.print(f"{job['id']} {job['status']}")


@keys_app.command("create")
def keys_create(
    tenant: str,
    scope: Annotated[
        list[str] | None, typer.Option(help="jobs (default) or admin; repeatable.")
    ] = None,
    name: Annotated[str, typer.Option()] = "",
) -> None:
    """Create a key for a tenant and print it (shown once)."""
    created = _guard(_client().create_key, tenant, scope or ["jobs"], name)
    out.print(created["key"])
    err.print(
        f"id {created['id']}, tenant {created['tenant']}, scopes {','.join(created['scopes'])}"
    )


@keys_app.command("list")
def keys_list() -> None:
    """Every key (prefixes only; secrets are never stored)."""
    table = Table("id", "tenant", "name", "prefix", "scopes", "revoked")
    for key in _guard(_client().keys):
        table.add_row(
            key["id"],
            key["tenant"],
            key["name"],
            key["prefix"] + "…",
            ",".join(key["scopes"]),
            "yes" if key["revoked_at"] else "",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key: it stops working at once."""
    _guard(_client().revoke_key, key_id)
    out.print(f"revoked {key_id}")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(submit)
    app.add_typer(jobs_app, name="jobs")
    app.add_typer(keys_app, name="keys")
