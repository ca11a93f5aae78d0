"""The gateway: the public HTTP API (FastAPI)."""
