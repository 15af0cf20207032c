"""Sources and their write keys: who may send events, and under which name."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from remarket.clock import Clock, SystemClock
from remarket.collect.secret_cache import SecretCache, hash_secret
from remarket.errors import ConflictError
from remarket.privacy import AuditLog
from remarket.schema.events import as_utc
from remarket.storage.state import sources

__all__ = ["Source", "SourceRegistry", "hash_secret"]


@dataclass(frozen=True, slots=True)
class Source:
    id: str
    name: str
    write_key_prefix: str
    enabled: bool
    created_at: datetime


class SourceRegistry:
    """Creates sources and resolves write keys, with a short cache on the hot path.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> registry = SourceRegistry(engine)
    >>> source, key = registry.create("web")
    >>> registry.authenticate(key) == source
    True
    """

    def __init__(
        self, engine: Engine, *, clock: Clock | None = None, cache_ttl: float = 30.0
    ) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._cache = SecretCache(self._lookup, ttl=cache_ttl)
        self._audit = AuditLog(engine, clock=self._clock)

    def create(self, name: str, *, actor: str = "cli") -> tuple[Source, str]:
        """A new source and its write key (shown once: only its hash is kept); recorded
        in the audit log as created by ``actor``, in the same transaction."""
        name = name.strip()
        if not name:
            raise ValueError("a source needs a non-empty name")
        created = self._clock.now()
        key = f"wk_{secrets.token_urlsafe(24)}"
        source = Source(uuid.uuid4().hex, name, key[:10], True, created)
        with self._engine.begin() as conn:
            taken = conn.scalar(select(sources.c.id).where(sources.c.name == name))
            if taken is not None:
                raise ConflictError(f"a source named {name!r} exists already", field="name")
            conn.execute(
                sources.insert().values(
                    id=source.id,
                    name=name,
                    write_key_hash=hash_secret(key),
                    write_key_prefix=source.write_key_prefix,
                    enabled=True,
                    created_at=created,
                )
            )
            self._audit.append(
                conn, actor=actor, action="source.create", target=source.id, details={}
            )
        return source, key

    def list(self) -> list[Source]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(sources).order_by(sources.c.created_at)).all()
        return [
            Source(r.id, r.name, r.write_key_prefix, r.enabled, as_utc(r.created_at)) for r in rows
        ]

    def authenticate(self, write_key: str) -> Source | None:
        """The enabled source owning ``write_key``, or None."""
        return self._cache.get(write_key)

    def _lookup(self, digest: str) -> Source | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(sources).where(sources.c.write_key_hash == digest, sources.c.enabled)
            ).one_or_none()
        if row is None:
            return None
        return Source(row.id, row.name, row.write_key_prefix, row.enabled, as_utc(row.created_at))
