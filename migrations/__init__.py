"""Alembic environment and versions for the gallery schema (see gallery/models.py)."""
