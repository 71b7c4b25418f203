"""boards, tags and ratings: a gallery people can organise

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

from gallery.tags import auto_tags

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, as 0003: batch mode would rebuild `images` and drop 0002's FTS triggers.
    op.add_column("images", sa.Column("rating", sa.Integer(), nullable=True))
    op.create_table(
        "boards",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("scope", sa.String(450), nullable=False),  # whose: local, g:<guild>, g:<guild>:u:<user>, dm:<user>
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("name_key", sa.String(100), nullable=False),  # casefolded: one "Sunsets" per scope
        sa.Column("owner", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("scope", "name_key", name="uq_boards_scope_name"),
    )
    op.create_table(
        "board_images",
        sa.Column("board_id", sa.Integer(), sa.ForeignKey("boards.id", ondelete="CASCADE"), nullable=False),
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("board_id", "image_id"),
    )
    op.create_index("ix_board_images_image", "board_images", ["image_id"])
    op.create_table(
        "image_tags",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("auto", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("image_id", "tag"),
    )
    op.create_index("ix_image_tags_tag_image", "image_tags", ["tag", "image_id"])
    # The images that exist get their automatic tags now (in chunks: a gallery may hold a million).
    conn = op.get_bind()
    last = 0
    while True:
        rows = conn.execute(sa.text("SELECT id, model, sampler, mode, source, width, height, params FROM images "
                                    "WHERE id > :last ORDER BY id LIMIT 5000"), {"last": last}).all()  # fmt: skip
        if not rows:
            break
        values = []
        for r in rows:
            params = json.loads(r.params) if isinstance(r.params, str) else r.params or {}
            for tag in auto_tags(model=r.model, sampler=r.sampler, mode=r.mode, source=r.source, width=r.width,
                                 height=r.height, params=params):  # fmt: skip
                values.append({"image_id": r.id, "tag": tag})
        conn.execute(sa.text("INSERT OR IGNORE INTO image_tags (image_id, tag, auto) VALUES (:image_id, :tag, 1)"),
                     values)  # fmt: skip
        last = rows[-1].id


def downgrade() -> None:
    op.drop_index("ix_image_tags_tag_image", "image_tags")
    op.drop_table("image_tags")
    op.drop_index("ix_board_images_image", "board_images")
    op.drop_table("board_images")
    op.drop_table("boards")
    op.drop_column("images", "rating")
