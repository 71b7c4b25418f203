"""Settings precedence: flags > DREAMHALL_* environment > config.toml > defaults; secrets stay secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.client.settings import Settings


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMHALL_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text('model = "/from/toml"\nmax_n = 4\ndevice = "cpu"\ndiscord_token = "t0k"\n')
    assert Settings().model == "/from/toml" and Settings().max_n == 4
    monkeypatch.setenv("DREAMHALL_MAX_N", "6")
    assert Settings().max_n == 6  # environment beats the file
    assert Settings(max_n=2).max_n == 2  # flags beat both
    s = Settings()
    assert s.discord_token is not None and s.discord_token.get_secret_value() == "t0k"
    assert "t0k" not in repr(s) and "t0k" not in str(s.model_dump())
    monkeypatch.setenv("DISCORD_TOKEN", "from-env")
    assert Settings().discord_token.get_secret_value() == "from-env"
    assert Settings().socket_path == tmp_path / "engine.sock"


def test_bad_values_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMHALL_HOME", str(tmp_path))
    monkeypatch.setenv("DREAMHALL_MAX_N", "99")
    with pytest.raises(ValueError, match="max_n"):
        Settings()


def test_the_dream_commands_socket_is_the_settings_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `dreamhall dream` finds the socket with engine.paths alone (no settings model): it must agree with
    # Settings in every case of the precedence for `home`.
    from engine.client import paths

    config_home = tmp_path / "config"
    monkeypatch.setattr("platformdirs.user_data_dir", lambda app: str(tmp_path / "data"))
    monkeypatch.setattr("platformdirs.user_config_dir", lambda app: str(config_home))
    monkeypatch.delenv("DREAMHALL_HOME", raising=False)
    assert paths.home() == Settings().home == tmp_path / "data"  # the platform's default
    config_home.mkdir()
    (config_home / "config.toml").write_text(f'home = "{tmp_path / "from-toml"}"\n')
    assert paths.home() == Settings().home == tmp_path / "from-toml"
    monkeypatch.setenv("DREAMHALL_HOME", str(tmp_path / "from-env"))
    assert paths.home() == Settings().home == tmp_path / "from-env"
    assert paths.home(tmp_path / "flag") == Settings(home=tmp_path / "flag").home == tmp_path / "flag"
    assert paths.socket_path(paths.home()) == Settings().socket_path
