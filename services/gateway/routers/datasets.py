"""Datasets (`datasets` scope): a tenant's audio and manifests in the object store, for
training (docs/datasets.md). The client sends the clips it is missing by digest, then the
manifest, which is checked line by line and committed; `mossctl datasets upload` does both."""

from __future__ import annotations

import tempfile

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import PlainTextResponse

from ...core import dataset_store as store
from ...core.errors import ApiError
from ..bodies import StrictRoute
from ..deps import Ctx, Datasets
from ..errors import AUTHENTICATED, BODY, PARAMS, SENDS, responses
from ..schemas import AudioCheck, AudioMissing, DatasetOut

router = APIRouter(
    prefix="/v1/datasets", tags=["datasets"], route_class=StrictRoute, responses=AUTHENTICATED
)
MANIFEST_LIMIT = 64 * 1024 * 1024
STATUS = {"not_found": 404, "upload_too_large": 413}
NAMED = {**PARAMS, **responses(404)}  # a dataset by name: 422 for a bad name, 404 for none
UPLOAD = {**PARAMS, **SENDS}  # a raw body, read as a stream (never parsed: no 400)


def raw_body(media_type: str, description: str) -> dict:
    """`openapi_extra` of a route that reads its body as a stream (FastAPI cannot see it)."""
    schema = {"type": "string", "format": "binary"}
    content = {media_type: {"schema": schema}}
    return {"requestBody": {"required": True, "description": description, "content": content}}


def _error(exc: store.DatasetError) -> ApiError:
    return ApiError(STATUS.get(exc.code, 422), exc.code, str(exc))


async def _spool(request: Request, limit: int) -> tempfile.SpooledTemporaryFile:
    """The request body in a temporary file, refused past `limit` bytes."""
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 (returned)
    async for chunk in request.stream():
        spool.write(chunk)
        if spool.tell() > limit:
            spool.close()
            raise ApiError(413, "upload_too_large", f"the body exceeds {limit} bytes")
    spool.seek(0)
    return spool


@router.get("", response_model=list[DatasetOut])
def list_datasets(ctx: Ctx, who: Datasets) -> list[DatasetOut]:
    """The tenant's committed datasets."""
    return [DatasetOut(**vars(d)) for d in store.list_datasets(ctx.storage, who.tenant)]


@router.get("/{name}", response_model=DatasetOut, responses=NAMED)
def get_dataset(ctx: Ctx, name: str, who: Datasets) -> DatasetOut:
    try:
        return DatasetOut(**vars(store.get_dataset(ctx.storage, who.tenant, name)))
    except store.DatasetError as exc:
        raise _error(exc) from None


@router.get(
    "/{name}/manifest",
    response_class=Response,  # not PlainTextResponse: its errors are JSON, not text/plain
    responses={
        **NAMED,
        200: {"description": "The manifest", "content": {"application/x-ndjson": {}}},
    },
)
def get_manifest(ctx: Ctx, name: str, who: Datasets) -> PlainTextResponse:
    """The committed manifest (JSONL), as training reads it."""
    try:
        info = store.get_dataset(ctx.storage, who.tenant, name)
    except store.DatasetError as exc:
        raise _error(exc) from None
    body = ctx.storage.get_bytes(info.manifest)
    return PlainTextResponse(body, media_type="application/x-ndjson",
                             headers={"X-Dataset-Digest": info.digest})  # fmt: skip


@router.post("/{name}/audio-check", response_model=AudioMissing, responses=BODY)
def check_audio(ctx: Ctx, name: str, body: AudioCheck, who: Datasets) -> AudioMissing:
    """Which of these clips (by sha256) still have to be sent."""
    try:
        return AudioMissing(missing=store.missing_audio(ctx.storage, who.tenant, name,
                                                        body.digests))  # fmt: skip
    except store.DatasetError as exc:
        raise _error(exc) from None


@router.put(
    "/{name}/audio/{digest}",
    status_code=204,
    responses=UPLOAD,
    openapi_extra=raw_body("application/octet-stream", "The clip's bytes, as they are."),
)
async def put_audio(ctx: Ctx, name: str, digest: str, request: Request, who: Datasets) -> Response:
    """One clip, as the raw body, stored under its sha256 (checked: a body that does not match
    its digest is refused and nothing is stored)."""
    limit = ctx.settings.max_upload_bytes
    spool = await _spool(request, limit)
    try:
        await run_in_threadpool(store.put_audio, ctx.storage, who.tenant, name, digest, spool,
                                limit)  # fmt: skip
    except store.DatasetError as exc:
        raise _error(exc) from None
    finally:
        spool.close()
    return Response(status_code=204)


@router.put(
    "/{name}/manifest",
    status_code=201,
    response_model=DatasetOut,
    responses=UPLOAD,
    openapi_extra=raw_body("application/x-ndjson", "The manifest: JSON lines (UTF-8)."),
)
async def put_manifest(
    ctx: Ctx, name: str, request: Request, who: Datasets, default_prompt: str = "",
    strict: bool = False,
) -> DatasetOut:  # fmt: skip
    """The JSONL manifest (raw body), its audio named `audio/{sha256}`. Every line is checked:
    the valid ones are committed and the bad ones reported (with `strict`, any bad line refuses
    the manifest)."""
    spool = await _spool(request, MANIFEST_LIMIT)
    try:
        raw = spool.read()
    finally:
        spool.close()
    try:
        info = await run_in_threadpool(store.commit_manifest, ctx.storage, who.tenant, name, raw,
                                       default_prompt, strict)  # fmt: skip
    except store.DatasetError as exc:
        raise _error(exc) from None
    return DatasetOut(**vars(info))


@router.delete("/{name}", status_code=204, responses=NAMED)
def delete_dataset(ctx: Ctx, name: str, who: Datasets) -> Response:
    """The dataset and its audio (models trained on it keep its digest in their lineage)."""
    try:
        store.delete_dataset(ctx.storage, who.tenant, name)
    except store.DatasetError as exc:
        raise _error(exc) from None
    return Response(status_code=204)
