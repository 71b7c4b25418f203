"""lineage of steering: the gallery pictures that steered an image (its controls and references), beside parent_id

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_sources",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("source_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("role", sa.String(16), primary_key=True),
    )
    op.create_index("ix_image_sources_source", "image_sources", ["source_id", "image_id"])
    # Images made before it recorded their controls and references in their parameters: their links, now.
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, params FROM images WHERE params LIKE '%gallery:%'"))
    links = []
    for image_id, params in rows:
        try:
            request = json.loads(params) if isinstance(params, str) else params or {}
        except ValueError:
            continue
        for role, key in (("control", "controls"), ("reference", "references")):
            for item in request.get(key) or []:
                ref = str(item.get("image", "")) if isinstance(item, dict) else ""
                if ref.startswith("gallery:") and ref[8:].isdigit():
                    links.append({"i": image_id, "s": int(ref[8:]), "r": role})
    if links:  # only sources that are (still) rows
        conn.execute(sa.text("INSERT OR IGNORE INTO image_sources (image_id, source_id, role) "
                             "SELECT :i, id, :r FROM images WHERE id = :s"), links)


def downgrade() -> None:
    op.drop_index("ix_image_sources_source", "image_sources")
    op.drop_table("image_sources")
