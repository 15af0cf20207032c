"""Time source: the real clock, or a controllable one for tests and simulations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware (UTC)."""
        ...


class SystemClock:
    """The wall clock.

    >>> SystemClock().now().tzinfo is not None
    True
    """

    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to.

    >>> c = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    >>> c.advance(timedelta(hours=1)).isoformat()
    '2026-01-01T01:00:00+00:00'
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock start must be timezone-aware")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, delta: timedelta) -> datetime:
        if delta < timedelta(0):
            raise ValueError("a clock cannot move backwards")
        self._now += delta
        return self._now
