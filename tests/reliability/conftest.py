"""The reliability suite's servers: the integration suite's Valkey and S3 server, reused."""

from tests.integration.conftest import redis_url, s3_endpoint  # noqa: F401  (fixtures)
