"""`python -m engine.server [--home DIR] [--model M] [--device D]`: run the engine in the foreground.

What `dreamhall engine` runs (it checks first that no engine answers), and what a frontend's
autostart spawns (engine.client.launch).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.client.settings import SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.server", description=__doc__)
    parser.add_argument("--home", type=Path, help="data directory (default: $DREAMHALL_HOME or the user data dir)")
    parser.add_argument("--model", help="default model: diffusers folder, hub id or .safetensors file")
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
    args = parser.parse_args(argv)
    overrides = {k: v for k in ("home", "model", "device") if (v := getattr(args, k)) is not None}
    try:
        settings = load_settings(**overrides)
    except SettingsError as e:
        return _fail(str(e), 2)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from engine.server.app import EngineAlreadyRunning, EngineFailed, serve

    try:
        serve(settings)
    except (EngineAlreadyRunning, EngineFailed) as e:
        return _fail(str(e), 1)
    return 0


def _fail(message: str, code: int) -> int:
    print(f"dreamhall: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
