"""The registry: models with their versions, lineage, metrics and aliases (and the local
checkpoints); aliases move through the promotion gate. The OpenAI-shaped list of the model ids
a request can name is `GET /v1/models` (routers/models.py)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ...core import imports, lifecycle
from ...core.errors import ApiError
from ..bodies import StrictRoute
from ..deps import Admin, App, Importer, Jobs, actor
from ..errors import AUTHENTICATED, BODY, responses
from ..schemas import (
    Alias,
    AliasMove,
    Decision,
    ImportRequest,
    ModelEntry,
    PipelineRunOut,
    Rollback,
    RollbackOut,
)

router = APIRouter(
    prefix="/v1/registry/models",
    tags=["registry"],
    route_class=StrictRoute,
    responses=AUTHENTICATED,
)
# MLflow: no such model or version (404), or no MLflow configured or answering (503).
REGISTRY = responses(404, 503)
IMPORT_PATH = "/v1/registry/models/import"  # its own body cap (app.py: MOSS_IMPORT_MAX_BYTES)
UPLOAD_FIELDS = ("file", "name", "alias", "trained_for")
JSON_LIMIT = 64 * 1024  # an import named by reference is a few hundred bytes


def _import_body() -> dict[str, Any]:
    """The two bodies the import route takes (it reads them itself: FastAPI cannot declare a
    JSON body and a multipart one on one route)."""
    by_reference = ImportRequest.model_json_schema()
    properties = {k: v for k, v in by_reference["properties"].items() if k in UPLOAD_FIELDS}
    properties["file"] = {
        "type": "string",
        "format": "binary",
        "description": "A .tar, .tar.gz or .zip of a hub-layout checkpoint directory.",
    }
    upload = {
        "type": "object",
        "properties": properties,
        "required": ["file", "name"],
        "additionalProperties": False,
    }
    content = {
        "application/json": {"schema": by_reference},
        "multipart/form-data": {"schema": upload},
    }
    return {"requestBody": {"required": True, "content": content}}


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
    """Move an alias (named in the body: there is no default) back to its previous version."""
    version = lifecycle.rollback(app.settings, name, body.alias, actor(who))
    return RollbackOut(name=name, alias=body.alias, version=version)


@router.post(
    "/import",
    status_code=202,
    response_model=PipelineRunOut,
    responses={**BODY, **responses(404, 415, 503)},
    openapi_extra=_import_body(),
)
async def import_model(app: App, request: Request, who: Importer, response: Response) -> dict:
    """Import a hub-layout checkpoint as a new registered version (admin or `registry` scope):
    a hub repo or an object-store key (JSON), or an archive (multipart `file`); `alias` with
    an admin key only, as any alias move (403 `alias_admin_only`). Answers 202
    with the `import` pipeline run that downloads, checks, registers and records its lineage;
    follow it at `Location` (GET /v1/pipelines/runs/{id})."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    queue = imports.Queue(app.settings, app.context.storage, app.runs, app.enqueue_pipeline)
    if media == "application/json":
        fields = _checked(await _json_object(request))
        started = await run_in_threadpool(imports.queue_import, queue, who, actor(who), fields)
    elif media == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=len(UPLOAD_FIELDS))
        try:
            unknown = sorted(set(form.keys()) - set(UPLOAD_FIELDS))
            if unknown:
                raise ApiError(422, "unknown_field", f"unknown form field(s): {', '.join(unknown)}"
                               f"; this route takes {', '.join(UPLOAD_FIELDS)}")  # fmt: skip
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise ApiError(422, "archive_required", "send the archive as the `file` part")
            fields = _checked({k: v for k, v in form.items() if k != "file"})
            upload = (file.file, file.size or 0, file.filename)
            started = await run_in_threadpool(
                imports.queue_upload, queue, who, actor(who), fields, upload
            )
        finally:
            await form.close()
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            "send JSON (`hub_id` or `key`) or multipart/form-data with the archive as `file`",
        )
    response.headers["Location"] = started["url"]
    return started


async def _json_object(request: Request) -> Any:
    """The JSON body, read within JSON_LIMIT (the route's cap is an archive's)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > JSON_LIMIT:
            raise ApiError(413, "upload_too_large", f"a JSON body is at most {JSON_LIMIT} bytes")
    request._body = body  # what StrictRequest.json parses (strictly: UTF-8, no NUL)
    try:
        value = await request.json()
    except ValueError as exc:  # as FastAPI answers a body it cannot decode
        raise ApiError(422, "invalid_request", f"the body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return value


def _checked(fields: dict[str, Any]) -> dict[str, Any]:
    """The fields, validated as ImportRequest (422 as for any body FastAPI validates)."""
    try:
        return ImportRequest.model_validate(fields).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors()) from None
