"""What the routes depend on: the job context, the caller's key, and the app's collaborators.

Routes get these through FastAPI dependencies, so a router is a list of thin functions and
`create_app` only wires. Every route but /healthz and /readyz authenticates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..core.errors import ApiError
from ..core.jobstore import Principal, RunStore
from ..core.queue import PipelineEnqueue
from ..core.settings import Settings
from ..jobs.context import Context
from .admission import Admission
from .metrics import Metrics
from .watch import JobWatch


@dataclass
class Gateway:
    """The app's collaborators (app.state.gateway)."""

    context: Context
    live_queues: Callable[[], set[str]]  # queues with at least one live worker
    enqueue_pipeline: PipelineEnqueue
    metrics: Metrics
    watch: JobWatch  # waits for job changes (the long poll)
    admission: Admission  # rate limit, quota, queue depth
    runs: RunStore  # pipeline runs (the job store's database)

    @property
    def settings(self) -> Settings:
        return self.context.settings


def gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def context(request: Request) -> Context:
    return request.app.state.gateway.context


# Declares the scheme in the OpenAPI document (Swagger's Authorize button); the check itself is
# ours below, so that a missing key gets our 401 body, not FastAPI's.
BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer moss_...`")


def principal(scope: str, *others: str) -> Callable[..., Principal]:
    """A dependency: the caller's key, which must carry `scope` (or one of `others`, or
    `admin`)."""
    accepted = (scope, *others)

    def dependency(
        request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]
    ) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise ApiError(401, "unauthorized", "send `Authorization: Bearer <api key>`")
        found = context(request).store.authenticate(key.strip())
        if found is None:
            raise ApiError(401, "unauthorized", "the API key is unknown or revoked")
        if not any(found.can(one) for one in accepted):
            named = " or ".join(repr(one) for one in accepted)
            raise ApiError(403, "forbidden", f"the API key lacks the {named} scope")
        request.app.state.gateway.admission.request(found)
        return found

    dependency.scope = scope  # what the route needs (the authorization matrix test reads it)
    dependency.scopes = accepted  # every scope that lets the key in
    return dependency


def actor(who: Principal) -> str:
    """How a decision records who made it (tenant and key prefix, never the key)."""
    return f"{who.tenant}:{who.key_id[:8]}"


# The header of every POST that creates a job: a retry with the same key returns the first job.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Retry safely: the same key and request within 24 h return the first "
        "job (with `Idempotent-Replayed: true`); the same key with another request is 409.",
    ),
]
Ctx = Annotated[Context, Depends(context)]
App = Annotated[Gateway, Depends(gateway)]
Jobs = Annotated[Principal, Depends(principal("jobs"))]
Admin = Annotated[Principal, Depends(principal("admin"))]
Datasets = Annotated[Principal, Depends(principal("datasets"))]
# Reading pipeline runs (the caller's tenant's; an admin's: every tenant's): the tenants that
# make runs, with job keys or registry imports.
RunReader = Annotated[Principal, Depends(principal("jobs", "registry"))]
Importer = Annotated[Principal, Depends(principal("registry"))]  # registry imports (or admin)


def creates_job(request: Request, who: Jobs) -> None:
    """A dependency of the routes that create jobs: the tenant's quota and the queue's depth."""
    request.app.state.gateway.admission.job(who)


def only_form_fields(*allowed: str) -> Callable[..., Any]:
    """A dependency: unknown form fields are refused (422 `unknown_field`), not ignored: a
    misspelt `max_new_token`, or a field the route does not have, would otherwise change
    nothing without a word. (Starlette keeps the parsed form, so the route's own parameters
    do not parse it again.)"""

    async def dependency(request: Request) -> None:
        unknown = sorted(set((await request.form()).keys()) - set(allowed))
        if unknown:
            raise ApiError(
                422,
                "unknown_field",
                f"unknown form field(s): {', '.join(unknown)}; this route takes "
                f"{', '.join(allowed)}",
            )

    return dependency
