"""`mossctl pipeline run | runs list|get|logs|cancel | compile | submit`: the training and
evaluation pipelines, and their runs through the API."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from ..core.queue import PIPELINE_NAMES
from ..core.runstate import FINAL
from .common import ClientError, client, err, fail, guard, out

app = typer.Typer(
    help="Kubeflow pipelines: run (through the API or here), follow runs, compile, submit.",
    no_args_is_help=True,
)
runs_app = typer.Typer(help="Pipeline runs: list, get, logs, cancel.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


# The pipelines NAME can be, from their one list (a new pipeline shows up in --help by itself).
NAME_HELP = ", ".join(PIPELINE_NAMES[:-1]) + f" or {PIPELINE_NAMES[-1]}"


def _params(pairs: list[str] | None, raw: str | None) -> dict[str, Any]:
    params: dict[str, Any] = json.loads(raw) if raw else {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--param takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


@app.command("compile")
def compile_(
    out_dir: Annotated[Path | None, typer.Option(help="Default: pipelines/compiled/")] = None,
    check: Annotated[
        bool, typer.Option(help="Fail if the committed files are out of date.")
    ] = False,
) -> None:
    """Compile every pipeline (CPU and GPU variants) to KFP IR YAML."""
    from pipelines.runner import COMPILED_DIR, compile_all

    target = out_dir or COMPILED_DIR
    if check:
        fresh = Path(tempfile.mkdtemp())
        stale = [
            p.name
            for p in compile_all(fresh)
            if not (target / p.name).is_file() or (target / p.name).read_text() != p.read_text()
        ]
        if stale:
            fail(f"out of date: {', '.join(stale)}; run `mossctl pipeline compile`", 1)
        out.print(f"{target} is current")
        return
    for path in compile_all(target):
        out.print(f"wrote {path}")


@app.command("run")
def run(
    name: Annotated[str, typer.Argument(help=NAME_HELP)],
    local: Annotated[
        bool, typer.Option("--local", help="Run here with kfp.local, not through the API.")
    ] = False,
    param: Annotated[list[str] | None, typer.Option(help="key=value; repeatable.")] = None,
    params: Annotated[str | None, typer.Option(help="Parameters as a JSON object.")] = None,
    root: Annotated[Path | None, typer.Option(help="kfp.local pipeline root (--local).")] = None,
    wait: Annotated[
        bool, typer.Option(help="Follow the run to its end, with a progress bar.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the ended run as JSON.")] = False,
) -> None:
    """Run a pipeline through the API (MOSS_URL, MOSS_API_KEY: an admin key): the platform's
    pipeline worker runs it, here with kfp.local or on Kubeflow; it is followed to its end
    (exit 1 if it fails or is cancelled). `--local` runs it on this machine instead."""
    values = _params(param, params)
    if local:
        _run_here(name, values, root)
        return
    api = client()
    started = guard(api.start_run, name, values)
    run_id = started["run_id"]
    err.print(f"run {run_id} of {name} queued ({started['mode']}); its log: "
              f"`mossctl pipeline runs logs {run_id} --follow`")  # fmt: skip
    if not wait:
        out.print(started["run_id"])
        return
    ended = follow_run(api, started["run_id"])
    _report(ended, as_json)


def _run_here(name: str, values: dict[str, Any], root: Path | None) -> None:
    from pipelines.runner import run_local

    workdir = root or Path(tempfile.mkdtemp(prefix="moss-kfp-"))
    err.print(f"running {name} locally with {values or 'defaults'} (outputs under {workdir})")
    try:
        outputs = run_local(name, values, workdir)
    except Exception as exc:
        fail(f"pipeline {name} failed: {type(exc).__name__}: {exc}", 1)
    out.print(json.dumps(outputs, default=str))


def follow_run(api, run_id: str, poll_s: float = 1.0) -> dict:
    """A progress bar from the run's status route (pipeline step, training step of total,
    loss, ETA) until the run ends; the ended run."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(f"run {run_id} queued", total=None, detail="")
        while True:
            current = guard(api.pipeline_run, run_id)
            if current["status"] in FINAL:
                return current
            step, total, detail = _progress(current)
            bar.update(task, description=f"run {run_id} {current['status']} "
                       f"({current['progress'].get('pipeline_step') or 'starting'})",
                       completed=step, total=total, detail=detail)  # fmt: skip
            time.sleep(poll_s)


def _progress(run: dict) -> tuple[float, float | None, str]:
    """(steps done, total or None, `step 40/200 loss 1.234 eta 42s`)."""
    shown = run["progress"]
    step, total = shown.get("step"), shown.get("total_steps")
    parts = [f"step {step}/{total}"] if step is not None and total else []
    if shown.get("loss") is not None:
        parts.append(f"loss {shown['loss']:.3f}")
    if shown.get("eta_s") is not None:
        parts.append(f"eta {shown['eta_s']:.0f}s")
    return float(step or 0), float(total) if total else None, " ".join(parts)


def _report(run: dict, as_json: bool) -> None:
    """The ended run: what it made, or one line saying why it did not; exit 1 unless it
    succeeded."""
    if as_json:
        sys.stdout.write(json.dumps(run, indent=2) + "\n")
    elif run["status"] == "succeeded":
        made = f"{run['model']} v{run['version']}" if run.get("model") else "nothing registered"
        loss = run["progress"].get("loss")
        out.print(f"run {run['id']} succeeded: {made}"
                  + (f", MLflow run {run['mlflow_run_id']}" if run.get("mlflow_run_id") else "")
                  + (f", final training loss {loss:.3f}" if loss is not None else ""))  # fmt: skip
    if run["status"] != "succeeded":
        error = run.get("error") or {}
        fail(f"run {run['id']} {run['status']}: {error.get('message', '')} "
             f"[{error.get('code', run['status'])}]; its log: "
             f"`mossctl pipeline runs logs {run['id']}`", 1)  # fmt: skip


@runs_app.command("list")
def runs_list(
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, ...")] = None,
    tenant: Annotated[str | None, typer.Option(help="An admin's filter: one tenant's.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200)] = 20,
    offset: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Pipeline runs, newest first (yours; an admin's: every tenant's)."""
    page = guard(client().pipeline_runs, status, tenant, limit, offset)
    names = ("id", "pipeline", "tenant", "status", "step", "progress", "made", "created")
    # an id and a status are never cut: one is copied, the other read at a glance
    table = Table(*(Column(name, no_wrap=name in ("id", "status")) for name in names))
    for run in page["runs"]:
        made = f"{run['model']} v{run['version']}" if run.get("model") else ""
        table.add_row(run["id"], run["name"], run["tenant"], run["status"],
                      run["progress"].get("pipeline_step") or "", _progress(run)[2], made,
                      run["created_at"][:19])  # fmt: skip
    out.print(table)
    err.print(f"{len(page['runs'])} of {page['total']} (offset {offset})")


@runs_app.command("get")
def runs_get(run_id: str) -> None:
    """One run as JSON: status, progress, what it made, its error."""
    sys.stdout.write(json.dumps(guard(client().pipeline_run, run_id), indent=2) + "\n")


@runs_app.command("logs")
def runs_logs(
    run_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Until the run ends.")] = False,
) -> None:
    """The run's log (from the object store, through the API)."""
    try:
        for chunk in client().run_log(run_id, follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
    except ClientError as exc:
        fail(exc.message + (f" [{exc.code}]" if exc.status else ""), 1 if exc.status >= 500 else 2)


@runs_app.command("cancel")
def runs_cancel(run_id: str) -> None:
    """Cancel a run (a running one stops within seconds; `runs get` then says cancelled)."""
    run = guard(client().cancel_run, run_id)
    out.print(f"{run['id']} {run['status']}"
              + (" (cancel requested)" if run["status"] == "running" else ""))  # fmt: skip


@app.command("submit")
def submit_(
    name: Annotated[str, typer.Argument(help=NAME_HELP)],
    host: Annotated[str, typer.Option(help="The Kubeflow Pipelines endpoint.")],
    gpu: Annotated[bool, typer.Option(help="Request a GPU for training and evaluation.")] = False,
    param: Annotated[list[str] | None, typer.Option(help="key=value; repeatable.")] = None,
    params: Annotated[str | None, typer.Option(help="Parameters as a JSON object.")] = None,
) -> None:
    """Submit a pipeline run to a Kubeflow cluster."""
    from pipelines.runner import submit

    try:
        out.print(submit(name, _params(param, params), host, gpu))
    except Exception as exc:
        fail(f"could not submit to {host}: {type(exc).__name__}: {exc}", 1)
