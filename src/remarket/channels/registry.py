"""Provider configurations in the state store (credentials encrypted) and the live
provider objects built from them."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Engine, select, update

from remarket.channels.audiences import GoogleCustomerMatchProvider, MetaAudienceProvider
from remarket.channels.email import SmtpProvider
from remarket.channels.http import FcmPushProvider, TwilioSmsProvider, WebhookProvider
from remarket.channels.providers import Provider
from remarket.channels.secrets import SecretBox
from remarket.errors import ConflictError, InvalidInput, NotFound
from remarket.storage.state import channel_providers

__all__ = ["KINDS", "ActiveProvider", "ProviderConfig", "ProviderStore", "build_provider"]


@dataclass(frozen=True, slots=True)
class _Kind:
    channel: str
    factory: Callable[..., Provider]
    config: frozenset[str]
    credentials: frozenset[str]
    required: frozenset[str]


def _kind(
    channel: str, factory: Callable[..., Provider], config: str, credentials: str, required: str
) -> _Kind:
    return _Kind(
        channel,
        factory,
        frozenset(config.split()),
        frozenset(credentials.split()),
        frozenset(required.split()),
    )


KINDS: Final[Mapping[str, _Kind]] = {
    "smtp": _kind(
        "email",
        SmtpProvider,
        "host port sender sender_name security ca_file timeout",
        "username password",
        "host port sender",
    ),
    "twilio": _kind(
        "sms",
        TwilioSmsProvider,
        "account_sid sender base_url timeout",
        "auth_token",
        "account_sid sender auth_token",
    ),
    "fcm": _kind(
        "push",
        FcmPushProvider,
        "project_id base_url timeout",
        "access_token",
        "project_id access_token",
    ),
    "webhook": _kind("webhook", WebhookProvider, "url timeout", "secret", "url secret"),
    "meta": _kind(
        "audience",
        MetaAudienceProvider,
        "country_code base_url version timeout",
        "access_token",
        "access_token",
    ),
    "google": _kind(
        "audience",
        GoogleCustomerMatchProvider,
        "customer_id login_customer_id country_code base_url version timeout",
        "developer_token access_token",
        "customer_id developer_token access_token",
    ),
}
"""Provider kinds: the channel each serves and the settings it takes (``config`` is
stored as given, ``credentials`` only encrypted)."""


@dataclass(frozen=True, slots=True)
class ActiveProvider:
    """An enabled provider as the deliverer needs it; ``stamp`` changes with the row."""

    id: str
    channel: str
    kind: str
    stamp: str
    rate_per_s: int | None
    config: dict[str, Any]
    credentials: dict[str, Any]

    def build(self) -> Provider:
        return build_provider(self.kind, self.config, self.credentials)


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    """A provider as the API shows it: the credential names, never their values."""

    id: str
    name: str
    channel: str
    kind: str
    config: dict[str, Any]
    credential_names: list[str]
    rate_per_s: int | None
    enabled: bool
    created_at: datetime
    updated_at: datetime


def _validate(kind: str, config: Mapping[str, Any], credentials: Mapping[str, Any]) -> _Kind:
    spec = KINDS.get(kind)
    if spec is None:
        raise InvalidInput(f"kind must be one of {sorted(KINDS)}", field="kind")
    for name, given, allowed in (
        ("config", config, spec.config),
        ("credentials", credentials, spec.credentials),
    ):
        unknown = sorted(set(given) - allowed)
        if unknown:
            raise InvalidInput(
                f"{kind} takes no {name} {unknown}; it takes {sorted(allowed)}",
                field=f"{name}.{unknown[0]}",
            )
    missing = sorted(spec.required - set(config) - set(credentials))
    if missing:
        raise InvalidInput(f"{kind} needs {missing}", field=missing[0])
    return spec


def build_provider(
    kind: str, config: Mapping[str, Any], credentials: Mapping[str, Any]
) -> Provider:
    """The provider object for a configuration (checked as the API checks it)."""
    spec = _validate(kind, config, credentials)
    try:
        return spec.factory(**config, **credentials)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{kind}: {exc}", field="config") from exc


class ProviderStore:
    """Provider configurations. The newest enabled provider of a channel (or, for
    audiences, of the audience's platform) is the one that sends."""

    def __init__(self, engine: Engine, box: SecretBox) -> None:
        self._engine = engine
        self._box = box

    def _view(self, row: Any) -> ProviderConfig:
        names = sorted(self._box.decrypt(row.secret)) if row.secret else []
        return ProviderConfig(
            row.id,
            row.name,
            row.channel,
            row.kind,
            dict(row.config),
            names,
            row.rate_per_s,
            bool(row.enabled),
            row.created_at,
            row.updated_at,
        )

    def create(
        self,
        *,
        name: str,
        kind: str,
        config: dict[str, Any],
        credentials: dict[str, Any],
        rate_per_s: int | None,
        now: datetime,
    ) -> ProviderConfig:
        spec = _validate(kind, config, credentials)
        provider_id = f"prv_{secrets.token_hex(8)}"
        with self._engine.begin() as conn:
            if conn.scalar(select(channel_providers.c.id).where(channel_providers.c.name == name)):
                raise ConflictError(f"a provider named {name!r} exists", field="name")
            conn.execute(
                channel_providers.insert(),
                {
                    "id": provider_id,
                    "name": name,
                    "channel": spec.channel,
                    "kind": kind,
                    "config": config,
                    "secret": self._box.encrypt(credentials) if credentials else None,
                    "rate_per_s": rate_per_s,
                    "enabled": True,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        return self.get(provider_id)

    def update(
        self,
        provider_id: str,
        *,
        config: dict[str, Any] | None,
        credentials: dict[str, Any] | None,
        rate_per_s: int | None,
        enabled: bool | None,
        now: datetime,
    ) -> ProviderConfig:
        """Change what is given; credentials given replace the stored ones whole."""
        with self._engine.begin() as conn:
            row = conn.execute(
                select(channel_providers).where(channel_providers.c.id == provider_id)
            ).one_or_none()
            if row is None:
                raise NotFound(f"no provider {provider_id!r}", field="provider_id")
            new_config = config if config is not None else dict(row.config)
            new_credentials = (
                credentials
                if credentials is not None
                else (self._box.decrypt(row.secret) if row.secret else {})
            )
            _validate(row.kind, new_config, new_credentials)
            values: dict[str, Any] = {"config": new_config, "updated_at": now}
            if credentials is not None:
                values["secret"] = self._box.encrypt(credentials) if credentials else None
            if rate_per_s is not None:
                values["rate_per_s"] = rate_per_s or None
            if enabled is not None:
                values["enabled"] = enabled
            conn.execute(
                update(channel_providers).where(channel_providers.c.id == provider_id), values
            )
        return self.get(provider_id)

    def get(self, provider_id: str) -> ProviderConfig:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(channel_providers).where(channel_providers.c.id == provider_id)
            ).one_or_none()
        if row is None:
            raise NotFound(f"no provider {provider_id!r}", field="provider_id")
        return self._view(row)

    def all(self) -> list[ProviderConfig]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(channel_providers).order_by(channel_providers.c.created_at))
            return [self._view(row) for row in rows]

    def active(self) -> list[ActiveProvider]:
        """Every enabled provider with its credentials, oldest first (so the newest of a
        channel wins when a caller keys them by channel)."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(channel_providers)
                .where(channel_providers.c.enabled.is_(True))
                .order_by(channel_providers.c.created_at, channel_providers.c.id)
            ).all()
        return [
            ActiveProvider(
                row.id,
                row.channel,
                row.kind,
                row.updated_at.isoformat(),
                row.rate_per_s,
                dict(row.config),
                self._box.decrypt(row.secret) if row.secret else {},
            )
            for row in rows
        ]
