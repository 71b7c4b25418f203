"""The Dreamhall engine, in three rooms: `client/` (what frontends import), `server/` (the front) and
`device/` (torch)."""

import sys

__version__ = "0.1.0"

# `import httpx` also imports httpx's own command-line client (rich, click, pygments): ~60 ms of
# every `dreamhall` command's start. Nothing here runs that client; httpx falls back to a stub.
sys.modules.setdefault("httpx._main", None)  # None in sys.modules blocks the import
