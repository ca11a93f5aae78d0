"""Server commands, as containers run them: `mossctl gateway | worker | worker-ping | migrate |
predictor` and `mossctl deploy render` (the production version's storageUri into Helm values)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from .cli_platform import _fail

out = Console(soft_wrap=True)
deploy_app = typer.Typer(help="Deployment helpers for the Helm chart.", no_args_is_help=True)
QUEUES = ("encode", "generate")


def gateway() -> None:
    """Serve the API (MOSS_HOST:MOSS_PORT); the sweeper runs inside it."""
    import runpy

    runpy.run_module("services.gateway", run_name="__main__")


def worker(
    queue: Annotated[str, typer.Argument(help="encode or generate")],
) -> None:
    """Run one Celery worker for QUEUE, named QUEUE@<hostname> (what worker-ping looks for)."""
    if queue not in QUEUES:
        _fail(f"queue must be one of {', '.join(QUEUES)}, not {queue!r}")
    from .queue import worker_argv
    from .settings import get_settings

    settings = get_settings()
    if not settings.redis_url:
        _fail("set MOSS_REDIS_URL (redis://host:6379/0) to run a worker")
    name = f"{queue}@{socket.gethostname()}"
    argv = worker_argv(queue, name, settings.generator_concurrency)
    os.execv(sys.executable, [sys.executable, *argv])  # Celery gets the signals directly


def worker_ping(
    queue: Annotated[str, typer.Argument(help="encode or generate")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Exit 0 when this host's QUEUE worker answers through the broker (a liveness probe)."""
    from .queue import make_celery
    from .settings import get_settings

    name = f"{queue}@{socket.gethostname()}"
    try:
        replies = make_celery(get_settings()).control.ping(destination=[name], timeout=timeout)
    except Exception as exc:  # the broker is away: not this worker's fault, but not alive
        _fail(f"cannot reach the broker: {type(exc).__name__}: {exc}", 1)
    if not any(name in reply for reply in replies):
        _fail(f"worker {name} did not answer within {timeout:g} s", 1)
    out.print(f"{name}: ok")


def migrate() -> None:
    """Bring the job store's schema up to date; create the admin key from MOSS_API_KEY."""
    from .jobstore import JobStore
    from .settings import get_settings
    from .stack import ADMIN_TENANT

    settings = get_settings()
    try:
        store = JobStore.connect(settings.resolved_database_url)  # runs Alembic to head
    except Exception as exc:
        _fail(f"cannot migrate {settings.resolved_database_url.split('@')[-1]}: {exc}", 1)
    out.print("job store schema is current")
    if settings.api_key is not None:
        plain = settings.api_key.get_secret_value()
        store.create_key(ADMIN_TENANT, ["admin", "jobs"], name="admin", plain=plain)
        out.print("admin API key (MOSS_API_KEY) is registered")


def predictor(
    role: Annotated[str, typer.Argument(help="encoder or generator")],
    model: Annotated[
        str,
        typer.Option(
            help="A checkpoint directory (KServe: /mnt/models), models:/NAME@ALIAS, or NAME."
        ),
    ] = "/mnt/models",
    model_name: Annotated[
        str | None, typer.Option(help="The KServe model name (default: the model's name).")
    ] = None,
    http_port: Annotated[int, typer.Option(help="REST (Open Inference Protocol V2).")] = 8080,
    grpc_port: Annotated[int, typer.Option(help="gRPC (Open Inference Protocol V2).")] = 8081,
) -> None:
    """Serve the encoder or the generator as a KServe model server (REST and gRPC)."""
    from .predictor.server import ROLES, serve

    if role not in ROLES:
        _fail(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    name = model_name or _default_name(model)
    try:
        serve(role, model, name, http_port, grpc_port)
    except (FileNotFoundError, LookupError, ValueError) as exc:
        _fail(str(exc), 1)


def _default_name(ref: str) -> str:
    if ref.startswith("models:/"):
        return ref.removeprefix("models:/").split("@")[0].split("/")[0]
    path = Path(ref)
    return path.name if path.name and path.name != "models" else "moss-audio"


@deploy_app.command("render")
def deploy_render(
    values: Annotated[Path, typer.Option(help="Helm values file to start from.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", help="Where to write the values.")],
    model: Annotated[str, typer.Option(help="Registered model name.")],
    alias: Annotated[str, typer.Option(help="The alias to deploy.")] = "production",
    artifacts_destination: Annotated[
        str | None,
        typer.Option(
            help="The MLflow server's --artifacts-destination (s3://bucket/prefix), to turn "
            "mlflow-artifacts:/ sources into a storageUri KServe can fetch."
        ),
    ] = None,
    canary: Annotated[
        int | None, typer.Option(help="canaryTrafficPercent for the new revision (Serverless).")
    ] = None,
) -> None:
    """Write VALUES with the storageUri of MODEL@ALIAS for both InferenceServices."""
    from .deploy import DeployError, render_values
    from .settings import get_settings

    settings = get_settings()
    if not settings.mlflow_uri:
        _fail("set MOSS_MLFLOW_URI to the MLflow server that holds the registry")
    try:
        rendered = render_values(
            values, settings.mlflow_uri, model, alias, artifacts_destination, canary
        )
    except DeployError as exc:
        _fail(str(exc), 1)
    out_file.write_text(rendered)
    out.print(f"wrote {out_file}")


def register(app: typer.Typer) -> None:
    app.command()(gateway)
    app.command()(worker)
    app.command("worker-ping")(worker_ping)
    app.command()(migrate)
    app.command()(predictor)
    app.add_typer(deploy_app, name="deploy")
