"""Settings from REMARKET_* environment variables and an optional remarket.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "load_settings"]

_CONFIG_ENV = "REMARKET_CONFIG"
_DEFAULT_CONFIG_FILE = Path("remarket.toml")


class Settings(BaseSettings):
    """Every knob of remarket. The defaults run embedded with data under ``./var/``.

    >>> s = Settings(data_dir=Path("/tmp/rm"))
    >>> s.resolved_database_url()
    'sqlite:////tmp/rm/state.db'
    """

    model_config = SettingsConfigDict(
        env_prefix="REMARKET_", extra="forbid", validate_default=True, frozen=True
    )

    data_dir: Path = Field(Path("var"), description="Where embedded stores keep their files.")
    database_url: SecretStr | None = Field(
        None,
        description="State store (SQLAlchemy URL). Default: SQLite file under data_dir. "
        "PostgreSQL: postgresql+psycopg://user:pass@host/db",
    )
    log_url: SecretStr | None = Field(
        None,
        description="Event log. Default: embedded SQLite WAL log under data_dir. "
        "Scale-out: nats://host:4222 (NATS JetStream).",
    )
    warehouse_url: SecretStr | None = Field(
        None,
        description="Analytic event store. Default: DuckDB file under data_dir. "
        "Alternative: postgresql://user:pass@host/db",
    )
    warehouse_schema: str = Field(
        "remarket_warehouse",
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL warehouse: the schema its tables live in (so it can share "
        "a database with the state store).",
    )
    log_fsync: Literal["full", "normal", "off"] = Field(
        "full",
        description="Embedded log durability: 'full' fsyncs every group commit (survives "
        "power loss), 'normal' survives a process crash only, 'off' for throwaway data.",
    )
    log_group_commit_max: int = Field(
        20_000, ge=1, description="Most events written in one log commit."
    )
    log_partitions: int = Field(
        16, ge=1, le=1024, description="Partitions of the log (events of one device stay in one)."
    )
    nats_stream: str = Field("REMARKET_EVENTS", description="JetStream stream name.")
    nats_subject_prefix: str = Field("remarket.events", description="JetStream subject prefix.")
    nats_duplicate_window_s: int = Field(
        86_400, ge=1, description="JetStream de-duplication window for messageIds (seconds)."
    )
    dedupe_capacity: int = Field(
        10_000_000,
        ge=1_000,
        description="How many recent messageIds the collector remembers to drop replays.",
    )
    max_event_bytes: int = Field(32 * 1024, ge=256, description="Largest accepted event.")
    max_request_bytes: int = Field(
        500 * 1024, ge=1024, description="Largest accepted request body (after gunzip)."
    )
    cors_origins: list[str] = Field(
        ["*"], description="Origins allowed to call the collection API from a browser."
    )
    host: str = Field("127.0.0.1", description="Address `remarket serve` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `remarket serve` listens on.")
    worker_batch_size: int = Field(
        10_000, ge=1, description="Most log records a worker applies in one transaction."
    )
    worker_poll_interval_s: float = Field(
        0.05, gt=0, description="How often an idle worker looks for new log records."
    )

    session_idle_timeout_s: int = Field(
        12 * 3600, ge=60, description="A console session ends after this long unused."
    )
    session_max_age_s: int = Field(
        7 * 86_400, ge=60, description="A console session ends this long after login."
    )
    login_max_failures: int = Field(
        5, ge=1, description="Failed logins for one address, within the window, that lock it."
    )
    login_failure_window_s: int = Field(
        900, ge=1, description="The lockout window: failures older than this are forgotten."
    )
    password_time_cost: int = Field(3, ge=1, description="argon2id passes per password hash.")
    password_memory_kib: int = Field(
        65_536, ge=64, description="argon2id memory per password hash (KiB)."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = Path(os.environ.get(_CONFIG_ENV, _DEFAULT_CONFIG_FILE))
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    def resolved_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'state.db'}"

    def resolved_log_url(self) -> str:
        if self.log_url is not None:
            return self.log_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'log.db'}"

    def resolved_warehouse_url(self) -> str:
        if self.warehouse_url is not None:
            return self.warehouse_url.get_secret_value()
        return f"duckdb:///{self.data_dir / 'warehouse.duckdb'}"


def load_settings(**overrides: Any) -> Settings:
    """Settings from init arguments, then REMARKET_* variables, then remarket.toml.

    The TOML file is ``./remarket.toml`` or the path in ``REMARKET_CONFIG``.
    """
    return Settings(**overrides)
