"""`mossctl models import | list | promote | rollback`: the registry, from the command line."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, BinaryIO

import httpx
import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn
from rich.table import Table

from ..core.modelref import ALIASES
from .common import Client, client, default_key, default_url, err, fail, guard, out
from .pipeline import follow_run

app = typer.Typer(
    help="The model registry: import, list, promote, roll back.", no_args_is_help=True
)


class Via(StrEnum):
    api = "api"
    mlflow = "mlflow"


@app.command("import")
def models_import(
    source: Annotated[
        str,
        typer.Argument(
            help="A checkpoint directory, a .tar/.tar.gz/.zip of one, a hub repo id, or (through "
            "the API) an object-store key under imports/TENANT/."
        ),
    ],
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
        float, typer.Option(help="Seconds to wait for the registry to answer first (MLflow).")
    ] = 0.0,
    via: Annotated[
        Via | None,
        typer.Option(
            help="`api`: through the gateway (MOSS_URL and an admin or `registry` key); "
            "`mlflow`: straight into MOSS_MLFLOW_URI. Default: mlflow where this machine has "
            "MOSS_MLFLOW_URI (or a running `mossctl up` and no MOSS_URL), else the API."
        ),
    ] = None,
) -> None:
    """Register a released (hub-layout) checkpoint as a new version, without training it.

    A hub id is downloaded with huggingface_hub (resumable; HF_TOKEN, HF_ENDPOINT and
    HF_HUB_OFFLINE apply), on the pipeline worker through the API. Through the API a local
    directory or archive is uploaded, and the import runs as a pipeline run followed to its end.
    The files go to the registry's artifact store once.
    """
    from ..core.settings import get_settings

    settings = get_settings()
    request = ImportArgs(source, name, alias, revision, trained_for)
    if (via or choose_route(settings)) == Via.api:
        imported = import_via_api(settings, request)
    else:
        imported = import_direct(settings, request, wait)
    version, existing, resolved = imported
    if existing:
        out.print(f"{name} v{version} already holds these files; not uploaded")
    else:
        where = f" ({resolved})" if resolved else ""
        out.print(f"registered {name} v{version} from {source}{where}")
    if alias:
        out.print(f"{name}@{alias} -> v{version} (explicit promotion)")
    else:
        out.print(
            f"not serving yet: `mossctl models promote {name} {version} --alias production "
            "--force` (imported versions have no evaluation to gate on)"
        )


@dataclass(frozen=True)
class ImportArgs:
    source: str
    name: str
    alias: str | None
    revision: str | None
    trained_for: str | None


def choose_route(settings) -> Via:
    """MLflow directly only where this machine has it: MOSS_MLFLOW_URI, or the registry of a
    `mossctl up` running here when MOSS_URL points nowhere else; otherwise the API."""
    if settings.mlflow_uri or (settings.url is None and registry_uri(settings)):
        return Via.mlflow
    if default_key(settings):
        return Via.api
    fail(
        "no registry to import into: set MOSS_URL and MOSS_API_KEY (an admin or `registry` key) "
        "to import through the API, or MOSS_MLFLOW_URI to write to MLflow directly"
    )


def import_direct(settings, request: ImportArgs, wait: float) -> tuple[str, bool, str | None]:
    """The import in this process, straight into MLflow: (version, already registered, the
    revision it resolved to)."""
    from pipelines.importer import ImportFailed, import_checkpoint

    uri = registry_uri(settings)
    if not uri:
        fail("no MLflow server: set MOSS_MLFLOW_URI (or use the API: MOSS_URL and a key)")
    source = request.source
    try:
        with err.status(f"importing {source}") as status:
            imported = import_checkpoint(
                source,
                request.name,
                tracking_uri=uri,
                alias=request.alias,
                actor=os.environ.get("USER", "mossctl"),
                revision=request.revision,
                trained_for=request.trained_for,
                progress=lambda message, *_: status.update(f"importing {source}: {message}"),
                wait_s=wait,
            )
    except ImportFailed as exc:
        fail(str(exc))
    except Exception as exc:  # the registry or the hub away
        fail(f"import failed: {type(exc).__name__}: {exc}", 1)
    return imported.version, imported.existing, imported.revision


IMPORT_ROUTE = "/v1/registry/models/import"


def import_via_api(settings, request: ImportArgs) -> tuple[str, bool, str | None]:
    """Queue the import through the gateway (a local directory or archive is uploaded), then
    follow its run to the end: (version, already registered, the revision asked for)."""
    api = Client(default_url(settings), default_key(settings))
    fields = {"name": request.name, "alias": request.alias, "trained_for": request.trained_for}
    fields = {k: v for k, v in fields.items() if v}
    path = Path(request.source).expanduser()
    if path.exists():
        if request.revision:
            fail("--revision applies to a hub id, not to a local checkpoint")
        run = upload_checkpoint(api, path, fields)
    elif request.source.startswith("imports/"):
        if request.revision:
            fail("--revision applies to a hub id, not to an object-store key")
        run = guard(api._call, "POST", IMPORT_ROUTE, json={**fields, "key": request.source})
    else:
        body = {**fields, "hub_id": request.source}
        if request.revision:
            body["revision"] = request.revision
        run = guard(api._call, "POST", IMPORT_ROUTE, json=body)
    err.print(f"import of {request.source}: run {run['run_id']} ({run['mode']})")
    version, existing = imported(follow_run(api, run["run_id"]))
    return version, existing, request.revision


def imported(final: dict) -> tuple[str, bool]:
    """What an ended import run made: (version, already registered); one line and a non-zero
    exit when it failed, or when it succeeded without naming its version (a Kubeflow run's
    record does not carry the steps' results: docs/pipelines.md), never `vNone`."""
    if final["status"] != "succeeded":
        # The import step's own error (its code) first, else the run's (a crash, a cancel).
        error = (final.get("progress") or {}).get("error") or final.get("error") or {}
        code = error.get("code", final["status"])
        reason = f"import {final['status']}: {error.get('message') or 'see the run log'}"
        fail(f"{reason} [{code}]", 2 if code.startswith(("archive_", "import_")) else 1)
    if final.get("version") in (None, ""):
        fail(f"import run {final.get('id')} succeeded but its record names no version (a "
             "Kubeflow run's record does not carry it); see `mossctl models list`", 1)  # fmt: skip
    message = (final.get("progress") or {}).get("message", "")
    return str(final["version"]), "registered before" in message


def upload_checkpoint(api: Client, path: Path, fields: dict[str, str]) -> dict:
    """POST the archive (a directory is packed into a tar first), with a progress bar."""
    from ..core.archive import HEAD_BYTES, kind, pack

    with tempfile.TemporaryDirectory(prefix="moss-import-") as tmp:
        archive = path
        if path.is_dir():
            archive = Path(tmp) / f"{path.name}.tar"
            with err.status(f"packing {path}"):
                pack(path, archive)
        else:
            with path.open("rb") as handle:
                if kind(handle.read(HEAD_BYTES)) is None:
                    fail(f"{path} is neither a checkpoint directory nor a .tar, .tar.gz or .zip")
        size = archive.stat().st_size
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn())
        with archive.open("rb") as handle, Progress(*columns, console=err) as bar:
            task = bar.add_task(f"uploading {archive.name}", total=size)
            reading = _Reading(handle, lambda n: bar.advance(task, n))
            return guard(api._call, "POST", IMPORT_ROUTE, files={"file": (archive.name, reading)},
                         data=fields, timeout=httpx.Timeout(60.0, read=None))  # fmt: skip


class _Reading:
    """A file that reports each read (httpx streams a multipart file by reading it)."""

    def __init__(self, handle: BinaryIO, advance) -> None:
        self.handle, self.advance = handle, advance

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        self.advance(len(chunk))
        return chunk

    def fileno(self) -> int:
        return self.handle.fileno()

    def seek(self, *args) -> int:
        return self.handle.seek(*args)

    def tell(self) -> int:
        return self.handle.tell()


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


ALIAS_HELP = f"The alias to move: {', '.join(ALIASES)} (required: there is no default)."


def required_alias(alias: str | None, command: str) -> str:
    """The alias, which the user must name: one slip must not move what every client gets."""
    if alias is None:
        fail(f"add --alias ALIAS ({', '.join(ALIASES)}): `mossctl models {command}` moves no alias "
             "by default")  # fmt: skip
    if alias not in ALIASES:
        fail(f"--alias must be one of {', '.join(ALIASES)}, not {alias!r}")
    return alias


@app.command("promote")
def models_promote(
    name: str,
    version: str,
    alias: Annotated[str | None, typer.Option("--alias", help=ALIAS_HELP)] = None,
    force: Annotated[bool, typer.Option(help="Skip the gate (recorded as forced).")] = False,
) -> None:
    """Move an alias to a version through the promotion gate."""
    alias = required_alias(alias, f"promote {name} {version}")
    decision = guard(
        client()._call,
        "POST",
        f"/v1/registry/models/{name}/aliases/{alias}",
        json={"version": version, "force": force},
    )
    out.print(f"{name}@{alias} -> v{version}: {decision['reason']}")


@app.command("rollback")
def models_rollback(
    name: str,
    alias: Annotated[str | None, typer.Option("--alias", help=ALIAS_HELP)] = None,
) -> None:
    """Move an alias back to the version that held it before."""
    alias = required_alias(alias, f"rollback {name}")
    moved = guard(
        client()._call, "POST", f"/v1/registry/models/{name}/rollback", json={"alias": alias}
    )
    out.print(f"{name}@{alias} -> v{moved['version']}")
