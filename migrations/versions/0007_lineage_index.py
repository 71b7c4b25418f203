"""lineage: an index on images.parent_id, so "everything derived from #42" walks its children, not the gallery

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_images_parent_id", "images", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_images_parent_id", "images")
