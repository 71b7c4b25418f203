"""One Settings object for every Dreamhall process, passed in explicitly.

Precedence: constructor arguments (command-line flags) > `DREAMHALL_*`
environment variables > the TOML config file > defaults. The config file is
`$DREAMHALL_HOME/config.toml` when it exists, else `config.toml` in the
platform's user config directory. Light on purpose: frontends import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from engine.client import paths
from engine.client.limits import MAX_N, MAX_SIDE, MIN_SIDE, Limits
from engine.client.paths import config_file, default_home
from engine.client.schema import DEFAULT_VARIATION_AMOUNT


class BotSettings(BaseModel):
    """The Discord bot's rules (`[bot]` in config.toml, or DREAMHALL_BOT__MAX_N=4 and so on)."""

    prefix: str = "!"
    dev_guild: int | None = Field(default=None, description="sync slash commands to this guild only (instant)")
    allowed_channels: list[int] = Field(default_factory=list, description="empty: every channel")
    banned_words: list[str] = Field(default_factory=list, description="refused outside NSFW channels")
    allowed_models: list[str] = Field(
        default_factory=list, description="checkpoints users may pick with -m (empty: every one on the engine's shelf)"
    )
    guild_models: dict[int, list[str]] = Field(
        default_factory=dict, description="per server: guild id -> its allowed checkpoints (overrides allowed_models)"
    )
    max_n: int = Field(default=4, ge=1, le=MAX_N)
    max_steps: int = Field(default=50, ge=1, le=150)
    max_size: int = Field(default=1024, ge=MIN_SIDE, le=MAX_SIDE)
    max_queued_per_user: int = Field(default=3, ge=1)
    variation_amount: float = Field(
        default=DEFAULT_VARIATION_AMOUNT, ge=0.0, le=1.0, description="how far the V buttons wander"
    )
    cooldown_s: float = Field(default=0.0, ge=0, description="seconds between a user's requests")
    progress_every_s: float = Field(default=2.0, ge=0.5, description="status message edits at most this often")


class Settings(BaseSettings):
    """Everything configurable; see README 'Configuration'."""

    model_config = SettingsConfigDict(env_prefix="DREAMHALL_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default_factory=default_home)
    model: str | None = Field(default=None, description="diffusers folder, hub id or .safetensors; None: built-in")
    models_dir: Path | None = Field(
        default=None, description="the model shelf, in A1111's layout (Stable-diffusion/, Lora/, embeddings/); "
        "None: <home>/models"
    )  # fmt: skip
    clip_model: str | None = Field(default=None, description="open_clip model name; None: built-in toy CLIP")
    clip_pretrained: str | None = Field(default=None, description="open_clip pretrained tag or weights file")
    device: str = Field(default="auto", description="auto, cpu, cuda, cuda:1, mps")
    search_min_score: float | None = Field(
        default=None, ge=-1.0, le=1.0,
        description="CLIP cosine under which a search hit is noise; None: the CLIP model's own "
        "(0.6 for the built-in toy CLIP, 0.2 for real ones)",
    )  # fmt: skip
    upscaler: str | None = Field(
        default=None,
        description="diffusers upscaler folder or hub id (SD x4 upscaler, x2 latent upscaler); "
        "None: Lanczos resample + img2img detail pass",
    )
    safety_check: bool = Field(
        default=True, description="run a model's own safety checker (when it has one) and flag images"
    )
    max_n: int = Field(default=MAX_N, ge=1, le=MAX_N)
    search_process: bool = Field(
        default=True,
        description="with CLIP on the CPU, embed searches' words in a process of their own (faster "
        "beside a running job; ~0.5 GB of RAM for torch and open_clip imported again)",
    )
    compile: Literal["off", "on", "auto"] = Field(
        default="off",
        description="torch.compile each model's UNet/transformer on its first use (inductor's cache is kept "
        "under home/inductor, so the warm-up is paid once per machine); auto: on a CUDA device only",
    )
    max_side: int = Field(default=MAX_SIDE, ge=MIN_SIDE, le=MAX_SIDE, description="largest side of any image it makes")
    batch_pixels: int | None = Field(
        default=None, ge=64 * 64,
        description="most pixels (images x width x height) one pipeline call may make; a request over it runs "
        "in several batches. None: the device's own budget (engine/device.py)",
    )  # fmt: skip
    batch_max: int = Field(
        default=8, ge=1, le=64,
        description="most images in one pipeline call made for several queued jobs that share a model, size, steps "
        "and sampler (cross-user batching, in fair order, within batch_pixels); 1: every job runs alone",
    )  # fmt: skip
    model_cache_gb: float | None = Field(
        default=None, gt=0,
        description="model weights kept loaded at once (LRU; the model in use always stays). None: half the "
        "GPU's memory, or a quarter of the RAM on a CPU",
    )  # fmt: skip
    model_affinity: int = Field(
        default=2, ge=0,
        description="how many times the fair next job may be passed over by a job on an already loaded model, "
        "to spare a reload; 0: strict round-robin",
    )  # fmt: skip
    max_queued_per_user: int = Field(default=20, ge=1)
    backend: Literal["local", "ray"] = Field(
        default="local", description="local: one worker thread on this machine's device; ray: `workers` GPU "
        "workers as Ray actors (README 'More GPUs')",
    )  # fmt: skip
    workers: int = Field(default=1, ge=1, le=1024, description="with backend=ray: how many workers (one GPU each)")
    ray_address: str | None = Field(
        default=None, description="with backend=ray: the cluster to join (ray://host:10001, or auto); None: start "
        "a local Ray instance",
    )  # fmt: skip
    worker_threads: int | None = Field(
        default=None, ge=1,
        description="with backend=ray on CPUs: torch threads (and Ray CPUs) per worker; None: the CPUs / workers",
    )  # fmt: skip
    job_retries: int = Field(
        default=2, ge=0, le=10, description="with backend=ray: how often a job whose worker died runs again elsewhere"
    )
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    tcp_host: str = "127.0.0.1"
    tcp_port: int | None = Field(default=None, description="opt-in TCP listener; needs `token`")
    token: SecretStr | None = None
    a1111_prefix: str = Field(
        default="", pattern=r"^(/[A-Za-z0-9._~-]+)*$",
        description="path before /sdapi/v1 on the TCP listener, e.g. /a1111 (empty: at the root, which "
        "SillyTavern needs: it replaces the URL's path)",
    )  # fmt: skip
    openai_prefix: str = Field(
        default="/openai/v1", pattern=r"^(/[A-Za-z0-9._~-]+)+$",
        description="where OpenAI's images API answers (a client's base URL is the listener plus this)",
    )  # fmt: skip
    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DISCORD_TOKEN", "discord_token"), description="never logged"
    )
    log_level: str = "INFO"
    bot: BotSettings = Field(default_factory=BotSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config_file())

    @property
    def limits(self) -> Limits:
        """What this engine makes at most: the job service checks requests against it."""
        return Limits(max_side=self.max_side, max_n=self.max_n)

    @property
    def socket_path(self) -> Path:
        return paths.socket_path(self.home)

    @property
    def pid_file(self) -> Path:
        return self.home / "engine.pid"

    @property
    def db_path(self) -> Path:
        return self.home / "gallery.db"

    @property
    def images_dir(self) -> Path:
        return self.home / "images"

    @property
    def shelf_dir(self) -> Path:
        return self.models_dir or self.home / "models"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def index_dir(self) -> Path:
        return self.home / "lancedb"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"


class SettingsError(ValueError):
    """Settings that cannot be used; the message is one sentence naming the setting or the file."""


def load_settings(**overrides: object) -> Settings:
    """The settings (flags given as `overrides`, over DREAMHALL_* variables, over config.toml), or SettingsError:
    what `dreamhall` and `python -m engine.server` both say about a bad value or an unreadable file."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]  # pydantic validates the flags' values
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SettingsError(
            f"bad setting {where}: {first['msg']} (check DREAMHALL_* variables and config.toml)"
        ) from None
    except (OSError, ValueError) as e:  # a config file that is not TOML, or cannot be read
        raise SettingsError(f"cannot read {config_file()}: {e}") from None
