"""One cog per feature: dreaming, and searching the gallery."""
