"""Settings from REMARKET_* environment variables and an optional remarket.toml."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "load_settings", "reference_table"]

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
    nats_max_age_s: float = Field(
        0,
        ge=0,
        description="JetStream: the stream forgets events older than this (seconds; the "
        "retention of the scale-out log, at least the duplicate window). 0: as the stream "
        "is configured (unlimited when remarket creates it).",
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
    worker_split: bool = Field(
        False,
        description="`remarket serve`: run the workers in two processes, the warehouse's "
        "part (events) and the people's part (profiles, segments, consent, journeys, "
        "delivery), each on its own core; for machines with cores to spare beside the API.",
    )

    channels_key: SecretStr | None = Field(
        None,
        description="Key (urlsafe base64, 32 bytes) that encrypts channel provider credentials "
        "and signs unsubscribe links. Default: generated once into data_dir/channels.key.",
    )
    channels_public_url: str = Field(
        "http://127.0.0.1:8000",
        description="Base URL of this server as recipients reach it (unsubscribe links).",
    )
    channels_default_timezone: str = Field(
        "UTC", description="Time zone of a profile without a `timezone` trait (IANA name)."
    )
    channels_phone_country_code: str = Field(
        "1",
        pattern=r"^[1-9][0-9]{0,2}$",
        description="Calling code added to phone numbers written without one.",
    )
    channels_webhook_purpose: Literal[
        "analytics", "personalization", "email", "sms", "push", "advertising"
    ] = Field("personalization", description="Consent purpose a webhook send requires.")
    channels_quiet_hours: tuple[int, int] | None = Field(
        (21, 8),
        description="Local hours [start, end) in which e-mail, SMS and push wait (deferred).",
    )
    channels_caps_per_day: dict[str, int] = Field(
        {},
        description="Most sends per profile per day by channel; key '*' caps all channels.",
    )
    channels_caps_per_week: dict[str, int] = Field(
        {},
        description="Most sends per profile per 7 days by channel; key '*' caps all channels.",
    )
    channels_max_attempts: int = Field(
        8, ge=1, description="Attempts before a failing message becomes a dead letter."
    )
    channels_backoff_s: float = Field(
        30.0, gt=0, description="First retry delay; doubles per attempt, with full jitter."
    )
    channels_backoff_max_s: float = Field(3600.0, gt=0, description="Longest retry delay.")
    channels_batch_size: int = Field(200, ge=1, description="Messages claimed per delivery step.")

    @field_validator("channels_default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"not an IANA time zone: {value!r}") from exc
        return value

    # -- privacy: erasure --
    pii_encryption: bool = Field(
        True,
        description="Encrypt PII fields and identifiers of every event under a per-person "
        "key before it enters the log, so that erasure can destroy the key "
        "(crypto-shredding) of what the log and its backups cannot rewrite.",
    )
    pii_fields: list[str] = Field(
        ["email", "phone", "name", "address", "ip"],
        description="Keys of traits, properties, context and context.traits that hold PII "
        "(encrypted in the log, erased with the person).",
    )
    parquet_export_dirs: list[Path] = Field(
        [], description="Folders of Parquet exports of the warehouse; erasure rewrites them."
    )
    # --- guard, consent at collect, pseudonymisation, retention ---
    guard_trusted_proxies: list[str] = Field(
        [],
        description="Networks (CIDR) of reverse proxies whose X-Forwarded-For names the client.",
    )
    guard_exempt_networks: list[str] = Field(
        ["127.0.0.0/8", "::1/128"],
        description="Networks (CIDR) exempt from the per-IP rate limit and IP velocity checks "
        "(server-side senders on this host).",
    )
    guard_key_events_per_s: float = Field(
        0, ge=0, description="Events per second one write key may send (0: no limit)."
    )
    guard_key_burst: int = Field(
        20_000, ge=1, description="Events a write key may send at once above its rate."
    )
    guard_ip_events_per_s: float = Field(
        1_000, ge=0, description="Events per second one client IP may send (0: no limit)."
    )
    guard_ip_burst: int = Field(
        5_000, ge=1, description="Events one client IP may send at once above its rate."
    )
    guard_bot_detection: bool = Field(
        True,
        description="Flag events from crawlers and headless browsers (by user agent): kept in "
        "the log, counted, kept out of the warehouse, profiles and segments.",
    )
    guard_velocity_factor: float = Field(
        100,
        gt=1,
        description="A profile or IP sending this many times its usual events per window is "
        "an anomaly: the excess is quarantined and reported.",
    )
    guard_velocity_window_s: int = Field(
        60, ge=1, description="The window of the velocity check (seconds)."
    )
    guard_velocity_floor: float = Field(
        3, gt=0, description="The least usual rate assumed for a profile (events per window)."
    )
    guard_velocity_ip_floor: float = Field(
        100, gt=0, description="The least usual rate assumed for an IP (events per window)."
    )
    guard_refresh_s: float = Field(
        5,
        gt=0,
        description="How often the collector reloads block lists and consent, and stores its "
        "counters and anomaly reports.",
    )
    consent_required: bool = Field(
        False,
        description="Collect treats a person with no recorded analytics decision as without "
        "consent. Off: only an explicit denial counts (the behaviour before consent checks).",
    )
    consent_action: Literal["drop", "pseudonymise"] = Field(
        "drop",
        description="What collect does with events of a person without analytics consent: "
        "'drop' them (counted), or keep them only pseudonymised (IP dropped, user agent "
        "reduced, ids hashed, traits emptied: they join no known profile).",
    )
    pseudonymise_ip: Literal["keep", "truncate", "drop"] = Field(
        "keep",
        description="context.ip of every event: keep, truncate (to the prefixes below) or drop.",
    )
    ip_v4_prefix: int = Field(24, ge=0, le=32, description="IPv4 prefix kept by truncation.")
    ip_v6_prefix: int = Field(48, ge=0, le=128, description="IPv6 prefix kept by truncation.")
    pseudonymise_user_agent: Literal["keep", "reduce", "drop"] = Field(
        "keep",
        description="context.userAgent of every event: keep, reduce (major versions and OS "
        "family only) or drop.",
    )
    pseudonymise_ids: bool = Field(
        False,
        description="Replace userId, anonymousId and previousId by a keyed HMAC-SHA256 "
        "(needs pseudonymisation_key); the same id always maps to the same pseudonym.",
    )
    pseudonymisation_key: SecretStr | None = Field(
        None, description="The HMAC key of pseudonymised ids (keep it secret, keep it stable)."
    )
    retention_default_days: int | None = Field(
        None,
        ge=1,
        description="Days events are kept where no retention rule applies (none: forever).",
    )
    retention_interval_s: float = Field(
        3_600, gt=0, description="How often the workers delete expired events."
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

    @model_validator(mode="after")
    def _hmac_needs_key(self) -> Settings:
        hashing = self.pseudonymise_ids or self.consent_action == "pseudonymise"
        if hashing and self.pseudonymisation_key is None:
            raise ValueError(
                "pseudonymisation_key is required by pseudonymise_ids and by "
                "consent_action='pseudonymise'"
            )
        return self

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


def _shown_default(name: str) -> str:
    field = Settings.model_fields[name]
    if field.is_required():
        return "(required)"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "(embedded)" if name.endswith("_url") else "(none)"
    if isinstance(value, SecretStr):
        return "(secret)"
    if isinstance(value, Path):
        return str(value)
    return str(value)


def reference_table() -> str:
    """Every setting as a Markdown table (the README's configuration reference).

    >>> reference_table().splitlines()[2].startswith("| `REMARKET_DATA_DIR` | `var` |")
    True
    """
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = " ".join((field.description or "").split()).replace("|", "\\|")
        default = _shown_default(name).replace("|", "\\|")
        lines.append(f"| `REMARKET_{name.upper()}` | `{default}` | {meaning} |")
    return "\n".join(lines) + "\n"
