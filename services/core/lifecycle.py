"""Model lifecycle operations for the API and the CLI: list models, move aliases through the
promotion gate, roll back, and queue pipeline runs for the pipeline worker.

Torch-free and pipeline-free: the registry client is core.registry, and a pipeline run is a
message on the `pipelines` queue (pipelines.worker runs it, locally with kfp.local or on
Kubeflow when MOSS_KFP_HOST is set).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from .errors import ApiError
from .jobstate import Status
from .jobstore import PipelineRun, RunStore
from .jobstore.runs import new_run_id
from .queue import PIPELINE_NAMES, PipelineEnqueue
from .settings import Settings

log = logging.getLogger("moss.lifecycle")


def registry(settings: Settings):
    from .registry import Registry

    if not settings.mlflow_uri:
        raise ApiError(503, "registry_unavailable", "no MLflow server configured (MOSS_MLFLOW_URI)")
    return Registry(settings.mlflow_uri)


def list_models(settings: Settings) -> list[dict[str, Any]]:
    """Registered models (versions, aliases, metrics, what each was trained for), then the
    local checkpoint directories; `default` marks what a job without `model` gets."""
    from .modelref import LOCAL_TRAINED_FOR, available_models, parse

    default = parse(settings.default_model).name
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


def model_ids(settings: Settings) -> list[dict[str, Any]]:
    """The ids a request can name, in the OpenAI list shape: each model as `name`, then as
    `name@alias` for each of its aliases; the default model first."""
    from .modelref import resolve

    out: list[dict[str, Any]] = []
    entries = sorted(list_models(settings), key=lambda entry: not entry["default"])
    for entry in entries:
        if entry["source"] == "registry":
            stamps = [v["created_at"] for v in entry["versions"] if v.get("created_at")]
            created = min(stamps) // 1000 if stamps else 0
        else:
            try:
                created = int(resolve(entry["name"], settings).path.stat().st_mtime)
            except (OSError, ValueError, LookupError):
                created = 0
        owner = entry["source"]
        out.append({"id": entry["name"], "created": created, "owned_by": owner})
        for alias in sorted(entry["aliases"]):
            out.append({"id": f"{entry['name']}@{alias}", "created": created, "owned_by": owner})
    return out


def promote(
    settings: Settings, name: str, alias: str, version: str, actor: str, force: bool = False
) -> dict[str, Any]:
    from mlflow.exceptions import MlflowException

    from .registry import ALIASES, EvaluationSetMismatch, PromotionRefused

    if alias not in ALIASES:
        raise ApiError(422, "invalid_alias", f"alias must be one of {', '.join(ALIASES)}")
    try:
        return registry(settings).promote(name, version, alias, actor, force=force).as_dict()
    except EvaluationSetMismatch as exc:  # the API never re-scores (torch-free): it says how
        raise ApiError(409, "evaluation_set_mismatch", str(exc)) from exc
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


def start_pipeline(
    settings: Settings,
    enqueue: PipelineEnqueue,
    name: str,
    params: dict,
    before: Callable[[str], str | None] | None = None,
    *,
    runs: RunStore,
    tenant: str,
    key_id: str | None = None,
    forget: Callable[[], None] | None = None,
) -> dict:
    """Create a run of `name` for `tenant` (durable first: its row), then queue it for the
    pipeline worker. The one way a run is made: the pipelines route and imports both come here.

    `before(run_id)` runs first and may return an earlier run's id instead (an idempotent
    retry): that run is answered and nothing is made or queued. A queue that cannot be reached
    fails the run it just recorded (503 `queue_unavailable`: nothing will run it). When nothing
    will run (the row could not be written, or the queue not reached), `forget()` undoes what
    `before` recorded: an Idempotency-Key left naming a run that does not exist, or one that
    never runs, would make every retry a new run, or answer a dead one."""
    if name not in PIPELINE_NAMES:
        raise ApiError(404, "not_found", f"no pipeline {name!r} ({', '.join(PIPELINE_NAMES)})")
    run_id = new_run_id()
    if before is not None and (first := before(run_id)) is not None:
        earlier = runs.get(first)
        if earlier is not None:
            return {**run_answer(earlier), "replayed": True}
    mode = "kubeflow" if settings.kfp_host else "local"
    try:
        run = runs.create(tenant, name, params, mode, key_id=key_id, run_id=run_id)
    except Exception:
        _quietly(forget)
        raise
    try:
        enqueue(run_id, name, params)
    except Exception as exc:
        runs.finish(run_id, Status.FAILED, {"code": "queue_unavailable", "message": "the "
                    "pipeline queue could not be reached; nothing ran"})  # fmt: skip
        _quietly(forget)
        raise ApiError(503, "queue_unavailable", "the pipeline queue cannot be reached") from exc
    return run_answer(run)


def _quietly(forget: Callable[[], None] | None) -> None:
    """Forget a key on the way out of a failed start; the first error is the one to answer."""
    if forget is None:
        return
    try:
        forget()
    except Exception:
        log.warning("could not forget the Idempotency-Key of a run that was not made",
                    exc_info=True)  # fmt: skip


def run_answer(run: PipelineRun) -> dict:
    """What POST /v1/pipelines/{name}/runs answers: the run's id, where it runs, its status,
    and the paths of its resource and its log."""
    url = f"/v1/pipelines/runs/{run.id}"
    return {"run_id": run.id, "mode": run.mode, "status": run.status, "url": url,
            "log": f"{url}/log"}  # fmt: skip
