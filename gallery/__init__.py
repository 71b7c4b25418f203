"""The gallery: every image remembered (SQLite + PNG files), embedded and searchable."""
