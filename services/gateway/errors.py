"""Every error leaves the gateway as `{"error": {"code", "message"}}` with a 4xx/5xx status.

The framework's own refusals (Starlette and FastAPI raise HTTPException: a malformed body, an
unknown path, a method the path does not take) get a named code too, and keep their headers
(`Allow` on a 405). `responses` documents the statuses a route answers in the OpenAPI document.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from ..core.errors import ApiError
from .schemas import ErrorBody

log = logging.getLogger("moss.gateway")

# What each error status means, as the OpenAPI document says it (the codes are in docs/api.md).
DESCRIPTIONS = {
    400: "`malformed_request`: a body that cannot be parsed (multipart without a boundary or "
    "its closing boundary, a part without a name, JSON nested too deep).",
    401: "`unauthorized`: no key, not `Bearer`, or an unknown or revoked key.",
    403: "`forbidden`: the key lacks the route's scope (or `priority_not_allowed`).",
    404: "`not_found` (or `model_not_found`): no such resource, or another tenant's.",
    408: "`body_timeout`: the body stopped arriving (MOSS_BODY_IDLE_TIMEOUT_S).",
    409: "The resource's state refuses the request (`job_finished`, `run_finished`, `no_result`, "
    "`idempotency_key_reused`, `promotion_refused`, `evaluation_set_mismatch`, "
    "`nothing_to_roll_back`).",
    413: "`upload_too_large` (the body passed the cap), or `audio_too_long_for_sync`.",
    415: "Not audio the platform takes (`not_audio`, `empty_audio`, `unsupported_codec`...); "
    "not a checkpoint archive (`not_an_archive`), or a body type the route does not take "
    "(`unsupported_media_type`).",
    422: "`invalid_request` (a field missing, of the wrong type or out of range), "
    "`invalid_<field>` (a value not among the field's choices), `invalid_utf8`, "
    "`unknown_field`, or the route's own codes.",
    429: "`rate_limited` or `quota_exceeded`, with `Retry-After`.",
    502: "The job behind a synchronous request failed: its own error code.",
    503: "Not now, retry (with `Retry-After`): `overloaded` (the gateway is at capacity), "
    "`database_unavailable`, `storage_unavailable`, `broker_unavailable` (a server behind it "
    "is away), `queue_full`, `queue_unavailable`, `registry_unavailable`.",
    504: "`sync_timeout`: the job outlasted MOSS_SYNC_TIMEOUT_S (it goes on).",
}
# The codes of the framework's HTTPExceptions; any other status gets its HTTP reason phrase in
# snake case (418: `im_a_teapot`), so every error has a machine-readable code.
HTTP_CODES = {
    400: "malformed_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "upload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses=` of a route (or a router) that can answer these error statuses."""
    return {s: {"model": ErrorBody, "description": DESCRIPTIONS[s]} for s in statuses}


# Every route that takes a key: refused without one (401), with the wrong scope (403), over the
# key's rate (429); or not now (503: the gateway at capacity, overload.py, or the job database,
# which checks the key, away, unavailable.py). Each router but health's declares these for all
# its routes.
AUTHENTICATED = responses(401, 403, 429, 503)
# Any parameter or body FastAPI validates (422); a body it parses (400); a POST, PUT or PATCH
# whose body passes the cap or stops arriving (413, 408: BodySizeLimit).
PARAMS = responses(422)
SENDS = responses(408, 413)  # a POST, PUT or PATCH, whether it has a body or not
BODY = {**responses(400, 422), **SENDS}
# A synchronous OpenAI-compatible route: its body and audio (415), a reused Idempotency-Key
# (409), a full queue (503), a job that failed (502) or outlasted the wait (504).
SYNC_JOB = {**BODY, **responses(409, 415, 502, 503, 504)}


class RequestRefused(StarletteHTTPException):
    """A request the framework's parsing refuses, with our code (FastAPI re-raises an
    HTTPException from body parsing as it is, where any other exception becomes a 400)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    response = error_response(exc.status, exc.code, exc.message)
    if exc.retry_after is not None:
        response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return response


async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
    loc = [p for p in first.get("loc", []) if p not in ("body", "query", "path", "header")]
    where = ".".join(str(p) for p in loc)
    code = "invalid_request"
    if first.get("type") in ("literal_error", "enum") and loc and isinstance(loc[-1], str):
        # A value outside a field's choices: the field's own code (`invalid_task`,
        # `invalid_status`, `invalid_alias`...), as the job code's own checks name it.
        code = f"invalid_{loc[-1].rstrip('[]').replace('-', '_').lower()}"
    return error_response(422, code, f"{where}: {first.get('msg')}".strip(": "))


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal_error", "an internal error occurred; it has been logged")


def http_code(status: int) -> str:
    if status in HTTP_CODES:
        return HTTP_CODES[status]
    try:
        phrase = HTTPStatus(status).phrase.lower().replace("'", "")
        return re.sub(r"[^a-z0-9]+", "_", phrase).strip("_")
    except ValueError:
        return "http_error"


def flat_routes(routes: Iterable[BaseRoute]) -> Iterator[Any]:
    """Every route of an app, those of its included routers too (FastAPI 0.16x keeps an
    included router as one entry of `app.routes`; each item here has `path`, `methods`,
    `matches` and, for an API route, `original_route`)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # an older FastAPI copies included routes into app.routes
        yield from routes
        return
    yield from iter_route_contexts(list(routes))


def _allowed(request: Request) -> str:
    """Every method the path takes. Starlette's `Allow` names only the methods of the first
    route that matched the path, and the gateway has one route per method (GET and POST
    /v1/jobs), so a 405 on PUT /v1/jobs said `Allow: POST`."""
    methods: set[str] = set()
    for route in flat_routes(request.app.router.routes):
        if route.matches(request.scope)[0] != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = getattr(exc, "code", None) or http_code(exc.status_code)
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed(request)):
        headers["Allow"] = allowed
    return error_response(exc.status_code, code, str(exc.detail), headers=headers or None)


def install(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
    app.add_exception_handler(StarletteHTTPException, _http)
