"""nsfw flag: what the model's own safety checker said of each image

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, not batch mode: batch mode rebuilds `images` on SQLite and that
# silently drops the FTS triggers of 0002 (a test of search caught it).
def upgrade() -> None:
    op.add_column("images", sa.Column("nsfw", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("images", "nsfw")
