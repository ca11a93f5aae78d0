"""API keys (admin): create (the secret is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...core.errors import ApiError
from ..deps import Admin, Ctx
from ..errors import ERRORS
from ..schemas import KeyCreate, KeyCreated, KeyOut, key_out

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(ctx: Ctx, body: KeyCreate, _: Admin) -> KeyCreated:
    plain, record = ctx.store.create_key(body.tenant, list(body.scopes), body.name)
    return KeyCreated(**key_out(record, key=plain))


@router.get("", response_model=list[KeyOut])
def list_keys(ctx: Ctx, _: Admin) -> list[KeyOut]:
    return [KeyOut(**key_out(r)) for r in ctx.store.list_keys()]


@router.delete("/{key_id}", status_code=204, responses=ERRORS)
def revoke_key(ctx: Ctx, key_id: str, _: Admin) -> Response:
    if not ctx.store.revoke_key(key_id):
        raise ApiError(404, "not_found", "no such key")
    return Response(status_code=204)
