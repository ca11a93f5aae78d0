"""Who may call what: every route of the app × every kind of caller.

The routes are read from the app itself (a new route is in the matrix without a word here), and
the scope each needs from its own dependency (`deps.principal`). A route that takes no key must
be one of PUBLIC, on purpose: the probes, the documentation and the web page (each call the page
makes sends the user's key). Callers: no key, a malformed `Authorization`, an unknown key, a
revoked key (401 `unauthorized`); a key with each scope that does not grant the route (403
`forbidden`); a key whose scope does (anything but 401 and 403: the request itself may still be
refused, it has no body).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from services.gateway.app import create_app
from services.gateway.errors import flat_routes
from services.gateway.schemas import SCOPES
from tests.jobs_env import make_context

# Public by design: liveness and readiness (probes send no key), the OpenAPI document and the
# pages that render it, and the web page with its assets.
PUBLIC = {"/healthz", "/readyz", "/openapi.json", "/docs", "/redoc", "/"}
PUBLIC_MOUNTS = {"/docs-assets", "/ui"}
SAMPLE = {"alias": "production", "name": "sft", "digest": "0" * 64}  # path values that parse
MALFORMED = {
    "basic": "Basic YWxpY2U6c2VjcmV0",
    "bearer-without-key": "Bearer",
    "bearer-blank-key": "Bearer    ",
    "no-scheme": "moss_abcdef",
    "token-scheme": "Token moss_abcdef",
}


def build(home: Path):
    ctx = make_context(home)
    app = create_app(ctx.settings, ctx, run_sweeper=False, enqueue_pipeline=lambda *run: None)
    return ctx, app


def required_scope(route: APIRoute) -> str | None:
    """The scope the route's key dependency asks for (None: the route takes no key); a route
    that lets several scopes in names them joined by `|` (`jobs|registry`)."""
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if (scope := getattr(dependant.call, "scope", None)) is not None:
            return "|".join(getattr(dependant.call, "scopes", (scope,)))
        pending.extend(dependant.dependencies)
    return None


def app_routes(app) -> list[tuple[str, str, str | None]]:
    """(method, path, scope) of every route of the app."""
    out = []
    for route in flat_routes(app.routes):
        original = getattr(route, "original_route", route)
        if not isinstance(original, APIRoute):
            assert route.path in PUBLIC | PUBLIC_MOUNTS, f"unexpected route {route.path}"
            continue
        for method in sorted(route.methods):
            out.append((method, route.path, required_scope(original)))
    return out


with tempfile.TemporaryDirectory() as _home:  # the routes, read once at collection
    ROUTES = app_routes(build(Path(_home))[1])
PROTECTED = [(m, p, s) for m, p, s in ROUTES if s is not None]


def route_id(route) -> str:
    method, path, scope = route
    return f"{method} {path}" + (f" ({scope})" if scope else "")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    ctx, app = build(tmp_path_factory.mktemp("auth"))
    keys = {scope: ctx.store.create_key("matrix", [scope])[0] for scope in SCOPES}
    revoked, record = ctx.store.create_key("matrix", list(SCOPES))
    assert ctx.store.revoke_key(record.id)
    keys["revoked"] = revoked
    with TestClient(app) as client:
        yield client, keys


def call(client, method: str, path: str, authorization: str | None):
    url = re.sub(r"\{(\w+)\}", lambda m: SAMPLE.get(m.group(1), "matrix-x"), path)
    headers = {} if authorization is None else {"Authorization": authorization}
    return client.request(method, url, headers=headers)


def test_the_matrix_covers_the_api() -> None:
    assert len(PROTECTED) >= 25, ROUTES  # the whole API, not an empty list
    public = {path for _, path, scope in ROUTES if scope is None}
    assert public <= PUBLIC, f"routes without a key that are not public by design: {public}"
    assert {"/healthz", "/readyz"} <= public
    assert ("GET", "/metrics", "admin") in ROUTES  # Prometheus needs the admin key
    assert {one for _, _, scope in PROTECTED for one in scope.split("|")} <= set(SCOPES)


def authorization(caller: str, keys: dict[str, str]) -> str | None:
    if caller == "no-key":
        return None
    if caller == "unknown-key":
        return "Bearer moss_thiskeywasnevermade"
    if caller == "revoked-key":
        return f"Bearer {keys['revoked']}"
    return MALFORMED[caller.removeprefix("malformed:")]


@pytest.mark.parametrize("route", PROTECTED, ids=route_id)
@pytest.mark.parametrize(
    "caller",
    ["no-key", *(f"malformed:{name}" for name in MALFORMED), "unknown-key", "revoked-key"],
)
def test_no_valid_key_is_401(env, route, caller) -> None:
    client, keys = env
    response = call(client, route[0], route[1], authorization(caller, keys))
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("route", PROTECTED, ids=route_id)
@pytest.mark.parametrize("scope", SCOPES)
def test_each_scope_is_refused_or_let_in(env, route, scope) -> None:
    client, keys = env
    method, path, needed = route
    response = call(client, method, path, f"Bearer {keys[scope]}")
    if scope in (*needed.split("|"), "admin"):  # admin implies every scope
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code == 403, response.text
        error = response.json()["error"]
        assert error["code"] == "forbidden"
        assert all(repr(one) in error["message"] for one in needed.split("|"))


@pytest.mark.parametrize("path", sorted(PUBLIC - {"/"}))
def test_public_routes_need_no_key(env, path) -> None:
    client, _ = env
    assert client.get(path).status_code in (200, 503)  # readyz: 503 without workers
