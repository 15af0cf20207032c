"""Access stores under concurrency, on SQLite and PostgreSQL: the lockout limit holds
for parallel guesses, and two admins demoting each other at once leave one admin."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TypeVar

from sqlalchemy import Engine

from remarket.api.lockout import Lockout
from remarket.api.passwords import Passwords
from remarket.api.users import UserStore
from remarket.errors import ConflictError

T = TypeVar("T")
PASSWORD = "correct horse battery staple"


def together(calls: list[Callable[[], T]]) -> list[T | Exception]:
    """Run the calls in threads released at the same moment; results or errors."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[], T]) -> T | Exception:
        barrier.wait()
        try:
            return call()
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(run, calls))


def test_parallel_guesses_get_no_more_than_the_limit(state_engine: Engine) -> None:
    lockout = Lockout(state_engine, max_failures=3, window=timedelta(minutes=5))
    outcomes = together([lambda: lockout.reserve("subject")] * 8)
    assert sum(o is None for o in outcomes) == 3
    assert all(isinstance(o, int) and o > 0 for o in outcomes if o is not None)


def test_two_admins_demoting_each_other_at_once_leave_one(state_engine: Engine) -> None:
    users = UserStore(state_engine, Passwords(time_cost=1, memory_kib=64))
    ann = users.create("ann@example.com", "admin", PASSWORD)
    bob = users.create("bob@example.com", "admin", PASSWORD)
    outcomes = together(
        [
            lambda: users.update(ann.id, actor=bob.id, role="viewer"),
            lambda: users.delete(bob.id, actor=ann.id),
        ]
    )
    assert sum(isinstance(o, ConflictError) for o in outcomes) == 1, outcomes
    assert [u.role for u in users.list()].count("admin") == 1
