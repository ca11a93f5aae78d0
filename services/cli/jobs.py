"""`mossctl submit` and `mossctl jobs get | list | cancel`: jobs through any deployment's API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..core.jobstate import Status
from .common import ClientError, client, err, fail, guard, out
from .render import ended_line, show_job

app = typer.Typer()
jobs_app = typer.Typer(help="Read, list and cancel jobs.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@app.command()
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
    webhook_url: Annotated[
        str | None, typer.Option(help="POSTed to, signed, when the job ends.")
    ] = None,
    priority: Annotated[
        str, typer.Option(help="normal, or high (a key with the priority scope).")
    ] = "normal",
    wait: Annotated[bool, typer.Option(help="Wait for the result, with a progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON.")] = False,
) -> None:
    """Upload audio as a job; wait and print the result (or --no-wait to print the id)."""
    if not file.is_file():
        fail(f"no such file: {file}")
    api = client()
    job = guard(
        api.submit,
        file,
        task,
        prompt=prompt,
        model=model,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        sampling=sampling,
        webhook_url=webhook_url,
        priority=priority,
    )
    if not wait:
        out.print(job["id"])
        return
    job = follow_job(api, job)
    if job["status"] != Status.SUCCEEDED and not as_json:
        fail(ended_line(job), 1)  # failed or cancelled: what happened, on one line
    _print_job(job, as_json)
    if job["status"] != Status.SUCCEEDED:
        raise typer.Exit(1)


def follow_job(api, job: dict) -> dict:
    """A progress bar that follows the job's events until it ends; the finished job."""
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err, transient=True) as progress:
        bar = progress.add_task(f"job {job['id'][:8]} queued", total=1.0)
        state = {"status": job["status"], "stage": job["stage"]}
        try:
            for kind, data in api.events(job["id"]):  # server-sent events, resumable
                if kind == "done":
                    return data
                if kind == "change":
                    state.update({k: data[k] for k in ("status", "stage") if k in data})
                    progress.update(bar, completed=data.get("progress"))
                progress.update(
                    bar, description=f"job {job['id'][:8]} {state['status']} ({state['stage']})"
                )
        except ClientError as exc:
            fail(exc.message + (f" [{exc.code}]" if exc.status else ""), 1)
    return api.job(job["id"])


def _print_job(job: dict, as_json: bool) -> None:
    """The job as JSON (`--json`: what the API sent), or shown by its shape (cli.render)."""
    if as_json:
        sys.stdout.write(json.dumps(job, indent=2, ensure_ascii=False) + "\n")
    else:
        show_job(job)


@jobs_app.command("get")
def jobs_get(job_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one job: its result, how it ended, or where it stands. Exits 0 whenever the job
    could be read, whatever its status (a read, like `kubectl get`; `--json` and `.status` for
    scripts); `submit` is the command whose exit code is the job's outcome."""
    _print_job(guard(client().job, job_id), as_json)


@jobs_app.command("list")
def jobs_list(
    status: Annotated[str | None, typer.Option()] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Your jobs, newest first."""
    page = guard(client().jobs, status, limit, offset)
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
def jobs_cancel(
    job_id: str,
    purge: Annotated[
        bool, typer.Option(help="Also delete the job's audio, features and result.")
    ] = False,
) -> None:
    """Cancel a queued or running job (or, with --purge, delete what any job holds)."""
    job = guard(client().cancel, job_id, purge)
    out.print(f"{job['id']} {job['status']}" + (" purged" if job.get("purged_at") else ""))
