"""From the registry to KServe: the storageUri of the version an alias points at.

Serving on Kubernetes follows the registry by rendering, not by resolving at start: `mossctl
deploy render` writes the production version's checkpoint location into the chart's values, and
`helm upgrade` rolls the InferenceServices to it. A new storageUri is a new revision, so KServe's
canary (`canaryTrafficPercent`, Serverless mode) and rollback (`helm rollback`, or `mossctl models
rollback` + render again) work as they do for any model; what runs is always in the values file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from ..core.settings import get_settings
from .common import fail, out

app = typer.Typer(help="Deployment helpers for the Helm chart.", no_args_is_help=True)

FETCHABLE = ("s3://", "gs://", "https://", "http://", "hf://", "pvc://", "oci://")
ROLES = ("encoder", "generator")


class DeployError(Exception):
    pass


def storage_uri(source: str, artifacts_destination: str | None) -> str:
    """A model version's source as a URI KServe's storage initializer can fetch."""
    if source.startswith("mlflow-artifacts:"):
        if not artifacts_destination:
            raise DeployError(
                f"{source} is served through the MLflow server: pass --artifacts-destination "
                "(the server's --artifacts-destination, e.g. s3://moss-audio/mlflow)"
            )
        path = source.removeprefix("mlflow-artifacts:").lstrip("/")
        return f"{artifacts_destination.rstrip('/')}/{path}"
    if source.startswith(FETCHABLE):
        return source
    raise DeployError(
        f"{source} is local to the MLflow host; a cluster cannot fetch it. Register versions "
        "through an MLflow server whose artifacts live in S3"
    )


def render_values(
    values_file: Path,
    tracking_uri: str,
    model: str,
    alias: str,
    artifacts_destination: str | None,
    canary: int | None = None,
) -> str:
    """The values file with both predictors pointed at `model@alias` (and the canary share)."""
    from services.core.registry import CHECKPOINT_ARTIFACT, Registry

    try:
        values: dict[str, Any] = yaml.safe_load(Path(values_file).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise DeployError(f"cannot read {values_file}: {exc}") from exc
    if canary is not None and not 0 <= canary <= 100:
        raise DeployError("--canary is a percentage: 0..100")
    registry = Registry(tracking_uri)
    version = registry.alias_holder(model, alias)
    if version is None:
        raise DeployError(f"no version of {model!r} holds alias {alias!r}")
    source = registry.client.get_model_version(model, version).source
    if not source.rstrip("/").endswith(CHECKPOINT_ARTIFACT):
        source = f"{source.rstrip('/')}/{CHECKPOINT_ARTIFACT}"
    uri = storage_uri(source, artifacts_destination)
    kserve = values.setdefault("kserve", {})
    kserve["modelName"] = model
    kserve["modelVersion"] = str(version)
    for role in ROLES:
        kserve.setdefault(role, {})["storageUri"] = uri
    if canary is not None:
        kserve["canaryTrafficPercent"] = canary
    return yaml.safe_dump(values, sort_keys=False)


@app.command("render")
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
    settings = get_settings()
    if not settings.mlflow_uri:
        fail("set MOSS_MLFLOW_URI to the MLflow server that holds the registry")
    try:
        rendered = render_values(
            values, settings.mlflow_uri, model, alias, artifacts_destination, canary
        )
    except DeployError as exc:
        fail(str(exc), 1)
    out_file.write_text(rendered)
    out.print(f"wrote {out_file}")
