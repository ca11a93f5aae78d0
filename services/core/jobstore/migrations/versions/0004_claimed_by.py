"""Which worker holds a running stage (its Celery node name), so that a restarted worker, or the
sweeper that sees the worker gone, gives the stage back within seconds instead of waiting for
its heartbeat to go stale.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("claimed_by", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("claimed_by")
