"""Where Dreamhall's files are: the home directory, the config file, the engine's socket.

The standard library and platformdirs only: `dreamhall dream` finds the socket with this
alone, without loading the settings model (engine.client.settings), which uses the same functions.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_home() -> Path:
    if os.environ.get("DREAMHALL_HOME"):
        return Path(os.environ["DREAMHALL_HOME"])
    import platformdirs  # ~10 ms (it loads tempfile and shutil): only when no home is set

    return Path(platformdirs.user_data_dir("dreamhall"))


def config_file() -> Path:
    local = default_home() / "config.toml"
    if local.exists():
        return local
    import platformdirs

    return Path(platformdirs.user_config_dir("dreamhall")) / "config.toml"


def home(override: Path | None = None) -> Path:
    """The home directory with the settings' precedence for `home`: the --home flag, $DREAMHALL_HOME,
    config.toml, the platform's default. A config file that cannot be read raises (OSError, ValueError)."""
    if override is not None:
        return override
    if not os.environ.get("DREAMHALL_HOME") and (file := config_file()).exists():
        import tomllib

        with file.open("rb") as f:
            configured = tomllib.load(f).get("home")
        if configured is not None:
            return Path(configured)
    return default_home()


def socket_path(home: Path) -> Path:
    return home / "engine.sock"
