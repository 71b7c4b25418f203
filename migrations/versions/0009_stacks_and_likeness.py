"""stacks and likeness: each image's stack (what it shares with images that differ only by seed or variation) and
its perceptual hash (true duplicates, told apart from merely similar images)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, as 0003 and 0006 (batch mode would rebuild `images` and drop 0002's FTS triggers). Existing
# images stack by their job (what they certainly share); their perceptual hashes are computed by `gallery check`.
def upgrade() -> None:
    op.add_column("images", sa.Column("stack_key", sa.String(64), nullable=True))
    op.add_column("images", sa.Column("phash", sa.String(16), nullable=True))
    op.execute("UPDATE images SET stack_key = 'job:' || job_id WHERE job_id IS NOT NULL")
    op.create_index("ix_images_stack_key", "images", ["stack_key"])


def downgrade() -> None:
    op.drop_index("ix_images_stack_key", "images")
    op.drop_column("images", "phash")
    op.drop_column("images", "stack_key")
