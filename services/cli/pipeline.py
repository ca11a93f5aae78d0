"""`mossctl pipeline compile | run | submit`: the training and evaluation pipelines."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from ..core.queue import PIPELINE_NAMES
from .common import err, fail, out

app = typer.Typer(help="Kubeflow pipelines: compile, run locally, submit.", no_args_is_help=True)


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
    local: Annotated[bool, typer.Option("--local", help="Run here with kfp.local.")] = False,
    param: Annotated[list[str] | None, typer.Option(help="key=value; repeatable.")] = None,
    params: Annotated[str | None, typer.Option(help="Parameters as a JSON object.")] = None,
    root: Annotated[Path | None, typer.Option(help="kfp.local pipeline root.")] = None,
) -> None:
    """Run a pipeline: `--local` runs it on this machine (SubprocessRunner, no Docker)."""
    from pipelines.runner import run_local

    if not local:
        fail("use --local, or `mossctl pipeline submit NAME --host URL` for a cluster")
    values = _params(param, params)
    workdir = root or Path(tempfile.mkdtemp(prefix="moss-kfp-"))
    err.print(f"running {name} locally with {values or 'defaults'} (outputs under {workdir})")
    try:
        outputs = run_local(name, values, workdir)
    except Exception as exc:
        fail(f"pipeline {name} failed: {type(exc).__name__}: {exc}", 1)
    out.print(json.dumps(outputs, default=str))


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
