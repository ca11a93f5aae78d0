"""`mossctl models import | list | promote | rollback`: the registry, from the command line."""

from __future__ import annotations

import os
from typing import Annotated

import typer
from rich.table import Table

from .common import client, err, fail, guard, out

app = typer.Typer(
    help="The model registry: import, list, promote, roll back.", no_args_is_help=True
)


@app.command("import")
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

    from ..core.settings import get_settings

    uri = registry_uri(get_settings())
    if not uri:
        fail("no MLflow server: set MOSS_MLFLOW_URI (or start the stack with `mossctl up`)")
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
        fail(str(exc))
    except Exception as exc:  # the registry or the hub away
        fail(f"import failed: {type(exc).__name__}: {exc}", 1)
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


@app.command("list")
def models_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered models, versions, aliases and metrics."""
    models = guard(client()._call, "GET", "/v1/registry/models")
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


@app.command("promote")
def models_promote(
    name: str,
    version: str,
    to: Annotated[
        str, typer.Option("--to", help="candidate, staging or production")
    ] = "production",
    force: Annotated[bool, typer.Option(help="Skip the gate (recorded as forced).")] = False,
) -> None:
    """Move an alias to a version through the promotion gate."""
    decision = guard(
        client()._call,
        "POST",
        f"/v1/registry/models/{name}/aliases/{to}",
        json={"version": version, "force": force},
    )
    out.print(f"{name}@{to} -> v{version}: {decision['reason']}")


@app.command("rollback")
def models_rollback(
    name: str,
    alias: Annotated[str, typer.Option(help="The alias to move back.")] = "production",
) -> None:
    """Move an alias back to the version that held it before."""
    moved = guard(
        client()._call, "POST", f"/v1/registry/models/{name}/rollback", json={"alias": alias}
    )
    out.print(f"{name}@{alias} -> v{moved['version']}")
