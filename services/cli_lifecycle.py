"""`mossctl pipeline compile|run|submit` and `mossctl models list|promote|rollback`."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from .cli_platform import _client, _fail, _guard

err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
pipeline_app = typer.Typer(
    help="Kubeflow pipelines: compile, run locally, submit.", no_args_is_help=True
)
models_app = typer.Typer(
    help="The model registry: import, list, promote, roll back.", no_args_is_help=True
)


def _params(pairs: list[str] | None, raw: str | None) -> dict[str, Any]:
    params: dict[str, Any] = json.loads(raw) if raw else {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep:
            _fail(f"--param takes key=value, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    return params


@pipeline_app.command("compile")
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
            _fail(f"out of date: {', '.join(stale)}; run `mossctl pipeline compile`", 1)
        out.print(f"{target} is current")
        return
    for path in compile_all(target):
        out.print(f"wrote {path}")


@pipeline_app.command("run")
def run(
    name: Annotated[str, typer.Argument(help="pretrain, sft or evaluate")],
    local: Annotated[bool, typer.Option("--local", help="Run here with kfp.local.")] = False,
    param: Annotated[list[str] | None, typer.Option(help="key=value; repeatable.")] = None,
    params: Annotated[str | None, typer.Option(help="Parameters as a JSON object.")] = None,
    root: Annotated[Path | None, typer.Option(help="kfp.local pipeline root.")] = None,
) -> None:
    """Run a pipeline: `--local` runs it on this machine (SubprocessRunner, no Docker)."""
    from pipelines.runner import run_local

    if not local:
        _fail("use --local, or `mossctl pipeline submit NAME --host URL` for a cluster")
    values = _params(param, params)
    workdir = root or Path(tempfile.mkdtemp(prefix="moss-kfp-"))
    err.print(f"running {name} locally with {values or 'defaults'} (outputs under {workdir})")
    try:
        outputs = run_local(name, values, workdir)
    except Exception as exc:
        _fail(f"pipeline {name} failed: {type(exc).__name__}: {exc}", 1)
    out.print(json.dumps(outputs, default=str))


@pipeline_app.command("submit")
def submit_(
    name: Annotated[str, typer.Argument(help="pretrain, sft or evaluate")],
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
        _fail(f"could not submit to {host}: {type(exc).__name__}: {exc}", 1)


@models_app.command("import")
def models_import(
    source: Annotated[str, typer.Argument(help="A checkpoint directory or a hub repo id.")],
    name: Annotated[str, typer.Option(help="Registered model name, e.g. moss-audio-4b-instruct.")],
    alias: Annotated[
        str | None,
        typer.Option(help="Move this alias (e.g. production) to it: an explicit promotion."),
    ] = None,
    revision: Annotated[str | None, typer.Option(help="Hub branch, tag or commit.")] = None,
    trained_for: Annotated[
        str | None, typer.Option(help="What the checkpoint was trained for (shown with answers).")
    ] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the registry to answer first.")
    ] = 0.0,
) -> None:
    """Register a released (hub-layout) checkpoint as a new version, without training it.

    A hub id is downloaded with huggingface_hub (resumable; HF_TOKEN, HF_ENDPOINT and
    HF_HUB_OFFLINE apply). The files go to the registry's artifact store once.
    """
    from pipelines.importer import ImportFailed, import_checkpoint

    from .settings import get_settings

    uri = registry_uri(get_settings())
    if not uri:
        _fail("no MLflow server: set MOSS_MLFLOW_URI (or start the stack with `mossctl up`)")
    try:
        with err.status(f"importing {source}") as status:
            imported = import_checkpoint(
                source,
                name,
                tracking_uri=uri,
                alias=alias,
                actor=os.environ.get("USER", "mossctl"),
                revision=revision,
                trained_for=trained_for,
                progress=lambda message: status.update(f"importing {source}: {message}"),
                wait_s=wait,
            )
    except ImportFailed as exc:
        _fail(str(exc))
    except Exception as exc:  # the registry or the hub away
        _fail(f"import failed: {type(exc).__name__}: {exc}", 1)
    where = f" ({imported.revision})" if imported.revision else ""
    if imported.existing:
        out.print(f"{imported.name} v{imported.version} already holds these files; not uploaded")
    else:
        out.print(f"registered {imported.name} v{imported.version} from {imported.source}{where}")
    if imported.alias:
        out.print(f"{imported.name}@{imported.alias} -> v{imported.version} (explicit promotion)")
    else:
        out.print(
            f"not serving yet: `mossctl models promote {imported.name} {imported.version} "
            "--to production --force` (imported versions have no evaluation to gate on)"
        )


def registry_uri(settings) -> str | None:
    """MOSS_MLFLOW_URI, else the MLflow server of a running `mossctl up` (MOSS_HOME/run)."""
    if settings.mlflow_uri:
        return settings.mlflow_uri
    written = settings.home.resolve() / "run" / "mlflow.url"
    return written.read_text().strip() if written.is_file() else None


@models_app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered models, versions, aliases and metrics."""
    models = _guard(_client()._call, "GET", "/v1/models")
    if as_json:
        out.print_json(data=models)
        return
    table = Table("model", "version", "aliases", "event QA", "ts err (s)", "run")
    for model in models:
        for version in model["versions"]:
            metrics = version["metrics"]
            table.add_row(
                model["name"],
                version["version"],
                ",".join(version["aliases"]),
                _fmt(metrics.get("event_qa_accuracy")),
                _fmt(metrics.get("timestamp_error_median_s")),
                (version["run_id"] or "")[:8],
            )
    out.print(table)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


@models_app.command("promote")
def models_promote(
    name: str,
    version: str,
    to: Annotated[
        str, typer.Option("--to", help="candidate, staging or production")
    ] = "production",
    force: Annotated[bool, typer.Option(help="Skip the gate (recorded as forced).")] = False,
) -> None:
    """Move an alias to a version through the promotion gate."""
    decision = _guard(
        _client()._call,
        "POST",
        f"/v1/models/{name}/aliases/{to}",
        json={"version": version, "force": force},
    )
    out.print(f"{name}@{to} -> v{version}: {decision['reason']}")


@models_app.command("rollback")
def models_rollback(
    name: str,
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
) -> None:
    """Move an alias back to the version that held it before."""
    moved = _guard(_client()._call, "POST", f"/v1/models/{name}/rollback", json={"alias": alias})
    out.print(f"{name}@{alias} -> v{moved['version']}")


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
    app.add_typer(models_app, name="models")
