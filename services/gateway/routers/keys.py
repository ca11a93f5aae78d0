"""API keys (admin): create (the secret is shown once), list, revoke; and each key's webhook
signing secret, which the admin or the key itself rotates."""

from __future__ import annotations

from fastapi import APIRouter, Response

from ...core.errors import ApiError
from ..bodies import StrictRoute
from ..deps import Admin, Ctx, Jobs
from ..errors import AUTHENTICATED, BODY, PARAMS, SENDS, responses
from ..schemas import KeyCreate, KeyCreated, KeyOut, WebhookSecret, key_out

router = APIRouter(
    prefix="/v1/keys", tags=["keys"], route_class=StrictRoute, responses=AUTHENTICATED
)


@router.post("", status_code=201, response_model=KeyCreated, responses=BODY)
def create_key(ctx: Ctx, body: KeyCreate, _: Admin) -> KeyCreated:
    plain, record = ctx.store.create_key(body.tenant, list(body.scopes), body.name)
    return KeyCreated(**key_out(record, key=plain, webhook_secret=record.webhook_secret))


@router.get("", response_model=list[KeyOut])
def list_keys(ctx: Ctx, _: Admin) -> list[KeyOut]:
    return [KeyOut(**key_out(r)) for r in ctx.store.list_keys()]


@router.delete("/{key_id}", status_code=204, responses={**PARAMS, **responses(404)})
def revoke_key(ctx: Ctx, key_id: str, _: Admin) -> Response:
    if not ctx.store.revoke_key(key_id):
        raise ApiError(404, "not_found", "no such key")
    return Response(status_code=204)


@router.post("/{key_id}/webhook-secret", status_code=201, response_model=WebhookSecret,
             responses={**PARAMS, **SENDS, **responses(404)})  # fmt: skip
def rotate_webhook_secret(ctx: Ctx, key_id: str, who: Jobs) -> WebhookSecret:
    """A new signing secret for the webhooks of a key's jobs, shown once. A key rotates its
    own (`me` names the calling key); the admin rotates any. Deliveries still pending are
    signed with the new secret."""
    key_id = who.key_id if key_id == "me" else key_id
    if key_id != who.key_id and not who.can("admin"):
        raise ApiError(404, "not_found", "no such key")
    secret = ctx.store.rotate_webhook_secret(key_id)
    if secret is None:
        raise ApiError(404, "not_found", "no such key")
    return WebhookSecret(key_id=key_id, webhook_secret=secret)
