"""Alembic environment: the URL comes from the caller (services.core.jobstore.migrate)."""

from alembic import context
from sqlalchemy import create_engine

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
        context.run_migrations()
