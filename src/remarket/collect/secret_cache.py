"""A short-lived cache of secret lookups (write keys, API keys), keyed by the secret's hash."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SecretCache", "hash_secret"]

T = TypeVar("T")


def hash_secret(secret: str) -> str:
    """SHA-256 hex of a high-entropy secret (write keys, API keys): what is stored."""
    return hashlib.sha256(secret.encode()).hexdigest()


class SecretCache(Generic[T]):
    """Remembers what a secret resolved to (including "nothing") for ``ttl`` seconds.

    Every request authenticates, so the database is asked once per key per ``ttl``;
    a revoked or disabled key stops working within ``ttl``.

    >>> calls = []
    >>> cache = SecretCache(lambda digest: calls.append(digest) or digest[:4], ttl=60)
    >>> cache.get("secret") == cache.get("secret"), len(calls)
    (True, 1)
    """

    def __init__(self, load: Callable[[str], T | None], *, ttl: float, size: int = 10_000) -> None:
        self._load = load
        self._ttl = ttl
        self._size = size
        self._entries: dict[str, tuple[float, T | None]] = {}

    def get(self, secret: str) -> T | None:
        """What ``secret`` resolves to; ``load`` receives its hash, never the secret."""
        digest = hash_secret(secret)
        now = time.monotonic()
        hit = self._entries.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        found = self._load(digest)
        if len(self._entries) >= self._size:
            self._entries.clear()
        self._entries[digest] = (now + self._ttl, found)
        return found
