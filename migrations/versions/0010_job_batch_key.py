"""cross-user batching: each job's batch key (jobs with the same key may share one pipeline call)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


# Jobs queued before it keep NULL: they run alone, as they would have.
def upgrade() -> None:
    op.add_column("jobs", sa.Column("batch_key", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("batch_key")
