"""Server commands, as containers run them: `mossctl gateway | worker | worker-ping | migrate |
predictor`."""

from __future__ import annotations

import os
import socket
import sys
from typing import Annotated

import typer

from ..core.queue import ANNOTATE_QUEUE, PIPELINE_QUEUE, QUEUES
from .common import fail, out

app = typer.Typer()
WORKER_QUEUES = (*QUEUES, ANNOTATE_QUEUE, PIPELINE_QUEUE)


@app.command()
def gateway() -> None:
    """Serve the API (MOSS_HOST:MOSS_PORT); the sweeper runs inside it."""
    import runpy

    runpy.run_module("services.gateway", run_name="__main__")


@app.command()
def worker(
    queue: Annotated[str, typer.Argument(help="encode, generate, annotate or pipelines")],
) -> None:
    """Run one Celery worker for QUEUE, named QUEUE@<hostname> (what worker-ping looks for).

    `pipelines` is the pipeline worker: it runs the pipeline runs the API queued."""
    if queue not in WORKER_QUEUES:
        fail(f"queue must be one of {', '.join(WORKER_QUEUES)}, not {queue!r}")
    from ..core.queue import worker_argv
    from ..core.settings import get_settings

    settings = get_settings()
    if not settings.redis_url:
        fail("set MOSS_REDIS_URL (redis://host:6379/0) to run a worker")
    name = f"{queue}@{socket.gethostname()}"
    argv = worker_argv(queue, name, settings)
    os.execv(sys.executable, [sys.executable, *argv])  # Celery gets the signals directly


@app.command("worker-ping")
def worker_ping(
    queue: Annotated[str, typer.Argument(help="encode, generate, annotate or pipelines")],
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Exit 0 when this host's QUEUE worker answers through the broker (a liveness probe)."""
    from ..core.queue import make_celery
    from ..core.settings import get_settings

    name = f"{queue}@{socket.gethostname()}"
    try:
        replies = make_celery(get_settings()).control.ping(destination=[name], timeout=timeout)
    except Exception as exc:  # the broker is away: not this worker's fault, but not alive
        fail(f"cannot reach the broker: {type(exc).__name__}: {exc}", 1)
    if not any(name in reply for reply in replies):
        fail(f"worker {name} did not answer within {timeout:g} s", 1)
    out.print(f"{name}: ok")


@app.command()
def migrate() -> None:
    """Bring the job store's schema up to date; create the admin key from MOSS_API_KEY."""
    from ..core.jobstore import JobStore
    from ..core.settings import get_settings
    from ..stack import ADMIN_TENANT

    settings = get_settings()
    try:
        store = JobStore.connect(settings.resolved_database_url)  # runs Alembic to head
    except Exception as exc:
        fail(f"cannot migrate {settings.resolved_database_url.split('@')[-1]}: {exc}", 1)
    out.print("job store schema is current")
    if settings.api_key is not None:
        plain = settings.api_key.get_secret_value()
        store.restore_key(ADMIN_TENANT, ["admin", "jobs"], "admin", plain)
        out.print("admin API key (MOSS_API_KEY) is registered and live")


@app.command()
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
    from ..predictor.server import ROLES, serve

    if role not in ROLES:
        fail(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    name = model_name or _default_name(model)
    try:
        serve(role, model, name, http_port, grpc_port)
    except (FileNotFoundError, LookupError, ValueError) as exc:
        fail(str(exc), 1)


def _default_name(ref: str) -> str:
    from ..core.modelref import parse

    try:
        parsed = parse(ref, allow_paths=True)
    except ValueError:
        return "moss-audio"
    return parsed.name if parsed.name and parsed.name != "models" else "moss-audio"
