"""The Dreamhall engine: request schema, `!dream` parser, queue, worker, pipelines, server and client."""

__version__ = "0.1.0"
