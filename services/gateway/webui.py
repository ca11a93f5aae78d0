"""The web page at `/` (services/gateway/web: plain HTML, CSS and an ES module, nothing to
build). The page itself is public, like /docs; every call it makes sends the API key the user
signs in with. A strict Content-Security-Policy keeps it to this origin: its own script and
style, the API, and audio from blobs it made."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB = Path(__file__).parent / "web"
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "media-src 'self' blob:; img-src 'self' data:; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def install(app: FastAPI) -> None:
    app.mount("/ui", StaticFiles(directory=WEB), name="ui")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            WEB / "index.html",
            headers={
                "Content-Security-Policy": POLICY,
                "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
            },
        )
