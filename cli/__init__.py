"""The `dreamhall` command line: a frontend like `bots/` and `desktop/` (it imports `engine.client` only)."""
