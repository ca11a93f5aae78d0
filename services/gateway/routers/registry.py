"""The registry: models with their versions, lineage, metrics and aliases (and the local
checkpoints); aliases move through the promotion gate. The OpenAI-shaped list of the model ids
a request can name is `GET /v1/models` (routers/models.py)."""

from __future__ import annotations

from fastapi import APIRouter

from ...core import lifecycle
from ..bodies import StrictRoute
from ..deps import Admin, App, Jobs, actor
from ..errors import AUTHENTICATED, BODY, responses
from ..schemas import Alias, AliasMove, Decision, ModelEntry, Rollback, RollbackOut

router = APIRouter(
    prefix="/v1/registry/models",
    tags=["registry"],
    route_class=StrictRoute,
    responses=AUTHENTICATED,
)
# MLflow: no such model or version (404), or no MLflow configured or answering (503).
REGISTRY = responses(404, 503)


@router.get("", response_model=list[ModelEntry])
def list_models(app: App, _: Jobs) -> list[dict]:
    """Registered models with their versions, aliases and evaluation metrics."""
    return lifecycle.list_models(app.settings)


@router.post(
    "/{name}/aliases/{alias}",
    response_model=Decision,
    responses={**BODY, **REGISTRY, **responses(409)},
)
def move_alias(app: App, name: str, alias: Alias, body: AliasMove, who: Admin) -> dict:
    """Point `alias` at a version if it passes the promotion gate (409 when refused)."""
    return lifecycle.promote(app.settings, name, alias, body.version, actor(who), body.force)


@router.post(
    "/{name}/rollback", response_model=RollbackOut, responses={**BODY, **REGISTRY, **responses(409)}
)
def rollback(app: App, name: str, body: Rollback, who: Admin) -> RollbackOut:
    """Move an alias (default `production`) back to its previous version."""
    version = lifecycle.rollback(app.settings, name, body.alias, actor(who))
    return RollbackOut(name=name, alias=body.alias, version=version)
