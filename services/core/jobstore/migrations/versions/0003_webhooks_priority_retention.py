"""Webhooks (a URL per job, a signing secret per API key, one row per delivery), job
priority, and purging (a purged job keeps its row, without audio, features or results).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("key_id", sa.String(36), nullable=True))
        jobs.add_column(sa.Column("webhook_url", sa.String(2048), nullable=True))
        jobs.add_column(
            sa.Column("priority", sa.String(8), nullable=False, server_default="normal")
        )
        jobs.add_column(sa.Column("purged_at", TS, nullable=True))
    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"])
    with op.batch_alter_table("api_keys") as keys:
        keys.add_column(sa.Column("webhook_secret", sa.String(64), nullable=True))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(36), nullable=False, index=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),  # pending|delivered|failed
        sa.Column("attempts", sa.JSON, nullable=False),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index(
        "ix_webhook_deliveries_due", "webhook_deliveries", ["status", "next_attempt_at"]
    )


def downgrade() -> None:
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("api_keys") as keys:
        keys.drop_column("webhook_secret")
    op.drop_index("ix_jobs_finished_at", "jobs")
    with op.batch_alter_table("jobs") as jobs:
        for column in ("purged_at", "priority", "webhook_url", "key_id"):
            jobs.drop_column(column)
