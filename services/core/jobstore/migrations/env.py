"""Alembic environment: the URL comes from the caller (services.core.jobstore.migrate)."""

from alembic import context
from sqlalchemy import create_engine, text

from services.core.jobstore.models import Base

url = context.config.get_main_option("sqlalchemy.url")
engine = context.config.attributes.get("connection") or create_engine(url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Every process migrates as it starts (gateways, workers, the chart's migrate Job):
            # on PostgreSQL one at a time, the others waiting, then finding the schema current.
            connection.execute(text("SELECT pg_advisory_xact_lock(7238461)"))
        context.run_migrations()
