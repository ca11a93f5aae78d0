"""The API's own documentation pages, served with no internet: Swagger UI and ReDoc from the
assets the `fastapi-offline` wheel ships (FastAPI's defaults load them from a CDN, so `/docs`
was blank on an air-gapped cluster). The bearer scheme itself is declared by the dependency
that checks keys (deps.principal), so Swagger's Authorize button sends the key.

One thing in those assets still reached out: ReDoc's sidebar draws Redocly's logo from
cdn.redoc.ly (hard-coded in the bundle; no option turns it off). The bundle is served with that
address replaced by an empty `data:` URL, and ReDoc drops an image that does not load.
"""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

ASSETS = Path(fastapi_offline.__file__).parent / "static"
PREFIX = "/docs-assets"
REDOC_JS = "redoc.standalone.js"
REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


class DocsAssets(StaticFiles):
    """The wheel's assets as they are, but ReDoc's bundle without its CDN logo."""

    def __init__(self) -> None:
        super().__init__(directory=ASSETS)
        self.redoc = (ASSETS / REDOC_JS).read_bytes().replace(REDOC_LOGO, b"data:,")

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path == REDOC_JS:
            return Response(self.redoc, media_type="text/javascript")
        return await super().get_response(path, scope)


def install(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc, with their scripts and styles under /docs-assets."""
    app.mount(PREFIX, DocsAssets(), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} — API",
            swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
            swagger_css_url=f"{PREFIX}/swagger-ui.css",
            swagger_favicon_url=f"{PREFIX}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/redoc", include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title=f"{app.title} — API",
            redoc_js_url=f"{PREFIX}/{REDOC_JS}",
            redoc_favicon_url=f"{PREFIX}/favicon.png",
            with_google_fonts=False,
        )
