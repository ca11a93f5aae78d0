"""`python -m services.gateway`: serve the API on MOSS_HOST:MOSS_PORT."""

from ..core.logs import configure
from ..core.settings import get_settings
from .app import create_app
from .server import serve

if __name__ == "__main__":
    settings = get_settings()
    configure(settings.log_format)
    serve(create_app(settings), settings)
