"""search: full-text index on prompts, and which CLIP model embedded which image

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "embeddings",
        sa.Column("image_id", sa.Integer(), sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("clip_model", sa.String(length=300), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("image_id", "clip_model"),
    )
    # Keyword search over prompts: an external-content FTS5 table kept in step by triggers.
    op.execute(
        "CREATE VIRTUAL TABLE images_fts USING fts5(prompt, negative_prompt, content='images', content_rowid='id', "
        "tokenize='unicode61 remove_diacritics 2')"
    )
    op.execute(
        "CREATE TRIGGER images_fts_insert AFTER INSERT ON images BEGIN "
        "INSERT INTO images_fts(rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt); END"
    )
    op.execute(
        "CREATE TRIGGER images_fts_delete AFTER DELETE ON images BEGIN "
        "INSERT INTO images_fts(images_fts, rowid, prompt, negative_prompt) "
        "VALUES ('delete', old.id, old.prompt, old.negative_prompt); END"
    )
    op.execute(
        "CREATE TRIGGER images_fts_update AFTER UPDATE OF prompt, negative_prompt ON images BEGIN "
        "INSERT INTO images_fts(images_fts, rowid, prompt, negative_prompt) "
        "VALUES ('delete', old.id, old.prompt, old.negative_prompt); "
        "INSERT INTO images_fts(rowid, prompt, negative_prompt) VALUES (new.id, new.prompt, new.negative_prompt); END"
    )
    op.execute("INSERT INTO images_fts(images_fts) VALUES ('rebuild')")  # rows that existed before this revision


def downgrade() -> None:
    for trigger in ("images_fts_insert", "images_fts_delete", "images_fts_update"):
        op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    op.execute("DROP TABLE IF EXISTS images_fts")
    op.drop_table("embeddings")
