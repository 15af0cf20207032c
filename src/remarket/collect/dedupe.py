"""Remember recent messageIds so that a replayed event is accepted but not stored twice."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

__all__ = ["Deduper", "dedupe_key"]


def dedupe_key(source_id: str, message_id: str) -> bytes:
    """16 bytes naming a message within a source (collisions: ~1 in 2**64 at 10**10 keys)."""
    return hashlib.blake2b(f"{source_id}\x1f{message_id}".encode(), digest_size=16).digest()


class Deduper:
    """A bounded set of recent keys, in two generations (the older half is forgotten first).

    Claiming is check-and-insert in one step, so two concurrent requests carrying the
    same messageId cannot both win; a caller whose append then fails releases its
    claims so the client's retry is not mistaken for a replay.

    >>> d = Deduper(capacity=4)
    >>> d.claim([b"a", b"b", b"a"])
    [True, True, False]
    >>> d.release([b"b"]); d.claim([b"b"])
    [True]
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 2:
            raise ValueError("dedupe capacity must be at least 2")
        self._half = capacity // 2
        self._current: set[bytes] = set()
        self._previous: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def _add(self, key: bytes) -> None:
        if len(self._current) >= self._half:
            self._previous = self._current
            self._current = set()
        self._current.add(key)

    def claim(self, keys: Sequence[bytes]) -> list[bool]:
        """For each key, True if it is new (and now remembered), False if a replay."""
        fresh: list[bool] = []
        current, previous = self._current, self._previous
        for key in keys:
            if key in current or key in previous:
                fresh.append(False)
            else:
                self._add(key)
                current = self._current
                fresh.append(True)
        return fresh

    def release(self, keys: Iterable[bytes]) -> None:
        """Forget keys whose events did not reach the log."""
        for key in keys:
            self._current.discard(key)
            self._previous.discard(key)

    def warm(self, newest_first: Sequence[bytes]) -> None:
        """Remember keys read back from the log (newest first), e.g. after a restart."""
        for key in reversed(newest_first[: self._half * 2]):
            if key not in self._current and key not in self._previous:
                self._add(key)
