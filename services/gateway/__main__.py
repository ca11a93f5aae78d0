"""`python -m services.gateway`: serve the API with uvicorn on MOSS_HOST:MOSS_PORT."""

import uvicorn

from ..core.logs import configure
from ..core.settings import get_settings
from .app import create_app

if __name__ == "__main__":
    settings = get_settings()
    configure(settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,  # ours (core.logs): request ids, text or JSON
        access_log=False,  # ours (gateway.requestid): no query strings
    )
