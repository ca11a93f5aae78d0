"""`python -m services.gateway`: serve the API with uvicorn on MOSS_HOST:MOSS_PORT."""

import logging

import uvicorn

from ..core.settings import get_settings
from .app import create_app

if __name__ == "__main__":
    settings = get_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info")
