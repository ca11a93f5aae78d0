"""The reliability suite's servers: the integration suite's Valkey, reused."""

from tests.integration.conftest import redis_url  # noqa: F401  (a fixture)
