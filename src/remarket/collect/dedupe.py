"""Remember recent messageIds so that a replayed event is accepted but not stored twice."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from hashlib import blake2b

__all__ = ["Deduper", "dedupe_key", "dedupe_keys"]


def dedupe_key(source_id: str, message_id: str) -> bytes:
    """16 bytes naming a message within a source (collisions: ~1 in 2**64 at 10**10 keys)."""
    return blake2b(f"{source_id}\x1f{message_id}".encode(), digest_size=16).digest()


def dedupe_keys(source_id: str, message_ids: Iterable[str]) -> list[bytes]:
    """:func:`dedupe_key` of many messages of one source, for the ingest hot path.

    >>> dedupe_keys("s", ["a", "b"]) == [dedupe_key("s", "a"), dedupe_key("s", "b")]
    True
    """
    prefix = f"{source_id}\x1f".encode()
    return [blake2b(prefix + m.encode(), digest_size=16).digest() for m in message_ids]


class Deduper:
    """A bounded set of recent keys, in two generations (the older half is forgotten first).

    Claiming is check-and-insert in one step, so two concurrent requests carrying the
    same messageId cannot both win. A claim is *in flight* until its owner settles it:
    a replay of an in-flight key gets the owner's future to await, because calling it a
    duplicate before the original is durable could acknowledge an event that is then
    lost. An owner whose append failed settles with ``durable=False``, which forgets
    its keys so the retry is not mistaken for a replay.

    The generations are dicts with None values rather than sets: a dict holding only
    bytes is not tracked by the garbage collector, while every full collection walks
    each entry of a set (0.5 s for 2 million keys, stalling ingest that long).

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
        self._current: dict[bytes, None] = {}
        self._previous: dict[bytes, None] = {}
        self._inflight: dict[bytes, asyncio.Future[bool]] = {}

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _add(self, key: bytes) -> None:
        if len(self._current) >= self._half:
            self._previous = self._current
            self._current = {}
        self._current[key] = None

    def claim(
        self, keys: Sequence[bytes], owner: asyncio.Future[bool] | None
    ) -> list[bool | asyncio.Future[bool]]:
        """For each key: True if new (now claimed by ``owner``), False if a durable
        replay, or the in-flight owner's future (True once durable, False if it failed).

        ``owner`` None claims keys as durable at once (for keys read back from the log).
        """
        fresh: list[bool | asyncio.Future[bool]] = []
        current, previous, inflight, half = (
            self._current,
            self._previous,
            self._inflight,
            self._half,
        )
        for key in keys:
            pending = inflight.get(key)
            if pending is not None:
                # Checked first: a key still in flight may have rotated out of both sets.
                fresh.append(pending)
                continue
            if key in current or key in previous:
                fresh.append(False)
                continue
            if len(current) >= half:
                self._previous = previous = current
                self._current = current = {}
            current[key] = None
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
                    self._current.pop(key, None)
                    self._previous.pop(key, None)
        if not owner.done():
            owner.set_result(durable)

    def warm(self, newest_first: Sequence[bytes]) -> None:
        """Remember keys read back from the log (newest first), e.g. after a restart."""
        for key in reversed(newest_first[: self._half * 2]):
            if key not in self._current and key not in self._previous:
                self._add(key)
