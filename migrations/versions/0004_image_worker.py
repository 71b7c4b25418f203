"""worker: which engine worker (the local thread, or a Ray actor) made each image

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, as 0003: batch mode would rebuild `images` and drop 0002's FTS triggers.
def upgrade() -> None:
    op.add_column("images", sa.Column("worker", sa.String(200), nullable=True))


def downgrade() -> None:
    op.drop_column("images", "worker")
