"""Pipeline runs as resources: one row per run (who asked, what, where it stands, what it made),
so a run can be followed (`GET /v1/pipelines/runs/{id}`, its events and log) and cancelled.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant", sa.String(128), nullable=False, index=True),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),  # local | kubeflow
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("progress", sa.JSON, nullable=False),  # the merged MOSS_PROGRESS fields
        sa.Column("mlflow_run_id", sa.String(64), nullable=True),
        sa.Column("model", sa.String(256), nullable=True),
        sa.Column("version", sa.String(32), nullable=True),
        sa.Column("decision", sa.JSON, nullable=True),
        sa.Column("error", sa.JSON, nullable=True),
        sa.Column("kubeflow_run_id", sa.String(64), nullable=True),
        sa.Column("log_key", sa.String(512), nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("claimed_by", sa.String(255), nullable=True),  # the pipeline worker's node
        sa.Column("key_id", sa.String(36), nullable=True),  # the key that asked for it
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_pipeline_runs_tenant_created", "pipeline_runs", ["tenant", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_pipeline_runs_tenant_created", "pipeline_runs")
    op.drop_table("pipeline_runs")
