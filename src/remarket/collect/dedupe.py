"""Remember recent messageIds so that a replayed event is accepted but not stored twice."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable, Sequence

__all__ = ["Deduper", "dedupe_key"]


def dedupe_key(source_id: str, message_id: str) -> bytes:
    """16 bytes naming a message within a source (collisions: ~1 in 2**64 at 10**10 keys)."""
    return hashlib.blake2b(f"{source_id}\x1f{message_id}".encode(), digest_size=16).digest()


class Deduper:
    """A bounded set of recent keys, in two generations (the older half is forgotten first).

    Claiming is check-and-insert in one step, so two concurrent requests carrying the
    same messageId cannot both win. A claim is *in flight* until its owner settles it:
    a replay of an in-flight key gets the owner's future to await, because calling it a
    duplicate before the original is durable could acknowledge an event that is then
    lost. An owner whose append failed settles with ``durable=False``, which forgets
    its keys so the retry is not mistaken for a replay.

    >>> d = Deduper(capacity=4)
    >>> d.claim([b"a", b"b"], None)
    [True, True]
    >>> d.claim([b"a"], None)
    [False]
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("dedupe capacity must be at least 2")
        self._half = capacity // 2
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _add(self, key: bytes) -> None:
        if len(self._current) >= self._half:
            self._previous = self._current
            self._current = set()
        self._current.add(key)

    def claim(
        self, keys: Sequence[bytes], owner: asyncio.Future[bool] | None
    ) -> list[bool | asyncio.Future[bool]]:
        """For each key: True if new (now claimed by ``owner``), False if a durable
        replay, or the in-flight owner's future (True once durable, False if it failed).

        ``owner`` None claims keys as durable at once (for keys read back from the log).
        """
        fresh: list[bool | asyncio.Future[bool]] = []
        current, previous, inflight = self._current, self._previous, self._inflight
        for key in keys:
            if key in current or key in previous:
                pending = inflight.get(key)
                fresh.append(False if pending is None else pending)
            else:
                self._add(key)
                current = self._current
                if owner is not None:
                    inflight[key] = owner
                fresh.append(True)
        return fresh

    def settle(self, keys: Iterable[bytes], owner: asyncio.Future[bool], durable: bool) -> None:
        """End ``owner``'s claims: kept if ``durable``, forgotten otherwise; wakes waiters."""
        for key in keys:
            if self._inflight.get(key) is owner:
                del self._inflight[key]
                if not durable:
                    self._current.discard(key)
                    self._previous.discard(key)
        if not owner.done():
            owner.set_result(durable)

    def warm(self, newest_first: Sequence[bytes]) -> None:
        """Remember keys read back from the log (newest first), e.g. after a restart."""
        for key in reversed(newest_first[: self._half * 2]):
            if key not in self._current and key not in self._previous:
                self._add(key)
