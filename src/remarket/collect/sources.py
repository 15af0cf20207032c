"""Sources and their write keys: who may send events, and under which name."""

from __future__ import annotations

import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from remarket.clock import Clock, SystemClock
from remarket.errors import ConflictError
from remarket.schema.events import as_utc
from remarket.storage.state import sources

__all__ = ["Source", "SourceRegistry", "hash_secret"]


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret (write keys, API keys): what is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


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
        self._ttl = cache_ttl
        self._cache: dict[str, tuple[float, Source | None]] = {}

    def create(self, name: str) -> tuple[Source, str]:
        """A new source and its write key (shown once: only its hash is kept)."""
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
        return source, key

    def list(self) -> list[Source]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(sources).order_by(sources.c.created_at)).all()
        return [
            Source(r.id, r.name, r.write_key_prefix, r.enabled, as_utc(r.created_at)) for r in rows
        ]

    def authenticate(self, write_key: str) -> Source | None:
        """The enabled source owning ``write_key``, or None."""
        digest = hash_secret(write_key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self._engine.connect() as conn:
            row = conn.execute(
                select(sources).where(sources.c.write_key_hash == digest, sources.c.enabled)
            ).one_or_none()
        found = (
            Source(row.id, row.name, row.write_key_prefix, row.enabled, as_utc(row.created_at))
            if row is not None
            else None
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[digest] = (now + self._ttl, found)
        return found
