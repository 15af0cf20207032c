"""API keys for the read and admin API: roles, scopes, and hashed storage."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Engine, select

from remarket.clock import Clock, SystemClock
from remarket.collect.secret_cache import SecretCache, hash_secret
from remarket.privacy import AuditLog
from remarket.schema.events import as_utc
from remarket.storage.state import api_keys

__all__ = ["ROLES", "SCOPES", "ApiKey", "ApiKeyStore"]

SCOPES: Final[tuple[str, ...]] = (
    "profiles:read",
    "sources:read",
    "sources:write",
    "quarantine:read",
    "quarantine:write",
    "metrics:read",
    "segments:read",
    "segments:write",
    "consent:read",
    "consent:write",
    "audit:read",
    "journeys:read",
    "journeys:write",
    "channels:read",
    "channels:write",
    "privacy:export",
    "privacy:erase",
    "retention:read",
    "retention:write",
    "guard:read",
    "guard:write",
    "users:read",
    "users:write",
)

ROLES: Final[dict[str, frozenset[str]]] = {
    "admin": frozenset(SCOPES),
    "marketer": frozenset(
        {
            "profiles:read",
            "sources:read",
            "metrics:read",
            "segments:read",
            "segments:write",
            "consent:read",
            "journeys:read",
            "journeys:write",
            "channels:read",
            "channels:write",
        }
    ),
    "analyst": frozenset(
        {
            "profiles:read",
            "sources:read",
            "quarantine:read",
            "metrics:read",
            "segments:read",
            "consent:read",
            "journeys:read",
            "channels:read",
            "retention:read",
            "guard:read",
        }
    ),
    "viewer": frozenset(
        {"sources:read", "metrics:read", "segments:read", "journeys:read", "channels:read"}
    ),
}


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    name: str
    role: str
    key_prefix: str
    created_at: datetime

    @property
    def scopes(self) -> frozenset[str]:
        return ROLES[self.role]


class ApiKeyStore:
    """Creates and checks API keys; only a SHA-256 of each key is stored.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> store = ApiKeyStore(engine)
    >>> key, secret = store.create("ops", "admin")
    >>> store.authenticate(secret) == key, store.authenticate("rk_wrong")
    (True, None)
    """

    def __init__(
        self, engine: Engine, *, clock: Clock | None = None, cache_ttl: float = 30.0
    ) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._cache = SecretCache(self._lookup, ttl=cache_ttl)
        self._audit = AuditLog(engine, clock=self._clock)

    def create(self, name: str, role: str, *, actor: str = "cli") -> tuple[ApiKey, str]:
        """A new key and its secret; recorded in the audit log as created by ``actor``
        (an API key id, or "cli"), in the same transaction."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
        secret = f"rk_{secrets.token_urlsafe(32)}"
        key = ApiKey(uuid.uuid4().hex, name, role, secret[:10], self._clock.now())
        with self._engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    id=key.id,
                    name=name,
                    role=role,
                    key_hash=hash_secret(secret),
                    key_prefix=key.key_prefix,
                    created_at=key.created_at,
                )
            )
            # After the insert: on SQLite the transaction holds the write lock by now.
            self._audit.append(
                conn, actor=actor, action="key.create", target=key.id, details={"role": role}
            )
        return key, secret

    def authenticate(self, secret: str) -> ApiKey | None:
        return self._cache.get(secret)

    def _lookup(self, digest: str) -> ApiKey | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(api_keys).where(
                    api_keys.c.key_hash == digest, api_keys.c.revoked_at.is_(None)
                )
            ).one_or_none()
        if row is None:
            return None
        return ApiKey(row.id, row.name, row.role, row.key_prefix, as_utc(row.created_at))
