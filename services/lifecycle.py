"""Registry and pipeline operations for the API: list models, move aliases through the gate,
roll back, trigger pipeline runs. Thin over pipelines.registry / pipelines.runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

from .errors import ApiError
from .settings import Settings


def registry(settings: Settings):
    from pipelines.registry import Registry

    uri = settings.mlflow_uri or os.environ.get("MOSS_MLFLOW_URI")
    if not uri:
        raise ApiError(503, "registry_unavailable", "no MLflow server configured (MOSS_MLFLOW_URI)")
    return Registry(uri)


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Registered models (versions, aliases, metrics, what each was trained for), then the
    local checkpoint directories; `default` marks what a job without `model` gets."""
    from .models import LOCAL_TRAINED_FOR, available_models, parse_ref

    default, _ = parse_ref(settings.default_model)
    models = registry(settings).models() if settings.mlflow_uri else []
    for entry in models:
        entry["source"] = "registry"
    for name in available_models(settings):
        models.append(
            {"name": name, "aliases": {}, "versions": [], "source": "local"}
            | {"trained_for": LOCAL_TRAINED_FOR}
        )
    for entry in models:
        entry["default"] = entry["name"] == default
    return models


def promote(
    settings: Settings, name: str, alias: str, version: str, actor: str, force: bool = False
) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from pipelines.registry import ALIASES, PromotionRefused

    if alias not in ALIASES:
        raise ApiError(422, "invalid_alias", f"alias must be one of {', '.join(ALIASES)}")
    try:
        return registry(settings).promote(name, version, alias, actor, force=force).as_dict()
    except PromotionRefused as exc:
        raise ApiError(409, "promotion_refused", str(exc)) from exc
    except MlflowException as exc:
        raise ApiError(404, "not_found", f"no version {version} of {name}") from exc


def rollback(settings: Settings, name: str, alias: str, actor: str) -> str:
    from mlflow.exceptions import MlflowException

    try:
        return registry(settings).rollback(name, alias, actor)
    except ValueError as exc:
        raise ApiError(409, "nothing_to_roll_back", str(exc)) from exc
    except MlflowException as exc:
        raise ApiError(404, "not_found", f"no model {name}") from exc


def start_pipeline(settings: Settings, name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Submit to Kubeflow when MOSS_KFP_HOST is set, else run with kfp.local in the background."""
    from pipelines.kfp_pipelines import PIPELINE_NAMES

    if name not in PIPELINE_NAMES:
        raise ApiError(404, "not_found", f"no pipeline {name!r} ({', '.join(PIPELINE_NAMES)})")
    if settings.kfp_host:
        from pipelines.runner import submit

        return {"run_id": submit(name, params, settings.kfp_host), "mode": "kubeflow"}
    run_id = uuid.uuid4().hex[:12]
    logs = settings.home.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"pipeline-{name}-{run_id}.log"
    argv = [
        sys.executable,
        "-m",
        "services.cli",
        "pipeline",
        "run",
        name,
        "--local",
        "--params",
        json.dumps(params),
    ]
    with log.open("ab") as out:
        subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[1],
            start_new_session=True,
        )
    return {"run_id": run_id, "mode": "local", "log": str(log)}
