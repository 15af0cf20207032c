"""Login lockout: at most N failed attempts per e-mail address within a sliding window."""

from __future__ import annotations

import hashlib
import math
from datetime import timedelta

from sqlalchemy import Connection, Engine, func, select

from remarket.clock import Clock, SystemClock
from remarket.privacy import immediate
from remarket.schema.events import as_utc
from remarket.storage.state import login_failures

__all__ = ["Lockout"]


def _lock_key(subject: str) -> int:
    """A 60-bit PostgreSQL advisory lock key for a subject."""
    return int(hashlib.sha256(subject.encode()).hexdigest()[:15], 16)


class Lockout:
    """Counts failed logins per subject (the hash of the address tried, whether or not
    such a user exists, so a lockout reveals nothing about who has an account).

    An attempt is reserved as a failure *before* its password is checked and cleared on
    success, so parallel guesses cannot slip past the limit while hashes are computed.

    >>> from datetime import UTC, datetime
    >>> from remarket.clock import ManualClock
    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    >>> lockout = Lockout(engine, clock=clock, max_failures=2, window=timedelta(minutes=1))
    >>> lockout.reserve("s"), lockout.reserve("s"), lockout.reserve("s")
    (None, None, 60)
    >>> _ = clock.advance(timedelta(seconds=61)); lockout.reserve("s") is None
    True
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock | None = None,
        max_failures: int = 5,
        window: timedelta = timedelta(minutes=15),
    ) -> None:
        if max_failures < 1:
            raise ValueError(f"max_failures must be at least 1, got {max_failures}")
        self._engine = engine
        self._clock = clock or SystemClock()
        self._max = max_failures
        self._window = window

    def reserve(self, subject: str) -> int | None:
        """None if an attempt may go on (it counts as a failure until :meth:`clear`),
        else the seconds until the oldest failure in the window expires."""
        now = self._clock.now()
        start = now - self._window
        with immediate(self._engine) as conn:
            if conn.dialect.name == "postgresql":
                # No row to lock before the first failure: a lock on the subject itself
                # queues parallel attempts (SQLite's BEGIN IMMEDIATE already does).
                conn.execute(select(func.pg_advisory_xact_lock(_lock_key(subject))))
            conn.execute(
                login_failures.delete().where(
                    login_failures.c.subject == subject, login_failures.c.at <= start
                )
            )
            recent = conn.scalars(
                select(login_failures.c.at)
                .where(login_failures.c.subject == subject)
                .order_by(login_failures.c.at)
            ).all()
            if len(recent) >= self._max:
                oldest = as_utc(recent[len(recent) - self._max])
                return max(1, math.ceil((oldest + self._window - now).total_seconds()))
            conn.execute(login_failures.insert().values(subject=subject, at=now))
            return None

    @staticmethod
    def clear(conn: Connection, subject: str) -> None:
        """Forget a subject's failures (a login succeeded), in the caller's transaction."""
        conn.execute(login_failures.delete().where(login_failures.c.subject == subject))
