"""Models in the OpenAI shape (`GET /v1/models`, `GET /v1/models/{id}`), so the official client
lists what it can send as `model`: every model name, and `name@alias` for each alias it has.

The registry's own view (versions, lineage, metrics, aliases) is `/v1/registry/models`.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from ...core import lifecycle
from ...core.errors import ApiError
from ..bodies import StrictRoute
from ..deps import App, Jobs
from ..errors import AUTHENTICATED, PARAMS, responses
from ..schemas import OpenAIModel, OpenAIModelList

router = APIRouter(
    prefix="/v1/models", tags=["models"], route_class=StrictRoute, responses=AUTHENTICATED
)


@router.get("", response_model=OpenAIModelList)
async def list_models(app: App, _: Jobs) -> OpenAIModelList:
    """The model ids a job (or an OpenAI-compatible request) can name, the default first."""
    ids = await run_in_threadpool(lifecycle.model_ids, app.settings)
    return OpenAIModelList(data=[OpenAIModel(**entry) for entry in ids])


@router.get("/{model_id}", response_model=OpenAIModel, responses={**PARAMS, **responses(404)})
async def get_model(app: App, model_id: str, _: Jobs) -> OpenAIModel:
    for entry in await run_in_threadpool(lifecycle.model_ids, app.settings):
        if entry["id"] == model_id:
            return OpenAIModel(**entry)
    raise ApiError(404, "model_not_found", f"no model {model_id!r}; GET /v1/models lists them")
