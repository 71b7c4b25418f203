"""find before you draw: each image's repeat key, and jobs answered from the gallery

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# Plain ALTER TABLE, as 0003: batch mode would rebuild `images` and drop 0002's FTS triggers. Existing images get
# no key: an older engine's pipeline may have drawn them differently, so only images made from now on are found.
def upgrade() -> None:
    op.add_column("images", sa.Column("repeat_key", sa.String(64), nullable=True))
    op.create_index("ix_images_repeat_key", "images", ["repeat_key"])
    op.add_column("jobs", sa.Column("found", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "found")
    op.drop_index("ix_images_repeat_key", "images")
    op.drop_column("images", "repeat_key")
