"""The collector's memory of recent messageIds."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from remarket.collect import Deduper, dedupe_key


def test_keys_are_scoped_by_source() -> None:
    assert dedupe_key("s1", "m") != dedupe_key("s2", "m")
    assert dedupe_key("s1", "m") == dedupe_key("s1", "m")
    assert len(dedupe_key("s1", "m")) == 16


@given(st.lists(st.binary(min_size=1, max_size=3), max_size=200))
def test_a_key_is_fresh_exactly_once_while_remembered(keys: list[bytes]) -> None:
    deduper = Deduper(capacity=1_000)
    fresh = deduper.claim(keys, None)
    seen: set[bytes] = set()
    for key, was_fresh in zip(keys, fresh, strict=True):
        assert was_fresh == (key not in seen)
        seen.add(key)
    assert not any(deduper.claim(list(seen), None))


def test_memory_is_bounded_and_forgets_the_oldest_first() -> None:
    deduper = Deduper(capacity=10)
    deduper.claim([bytes([i]) for i in range(30)], None)
    assert len(deduper) <= 10
    assert deduper.claim([bytes([29])], None) == [False]
    assert deduper.claim([bytes([0])], None) == [True]


def test_a_replay_of_an_in_flight_key_waits_for_the_original() -> None:
    async def scenario() -> tuple[bool, list[object]]:
        deduper = Deduper(capacity=10)
        owner = asyncio.get_running_loop().create_future()
        assert deduper.claim([b"a", b"b"], owner) == [True, True]
        (pending,) = deduper.claim([b"a"], None)
        deduper.settle([b"a", b"b"], owner, durable=True)
        assert isinstance(pending, asyncio.Future)
        return await pending, deduper.claim([b"a"], None)

    durable, after = asyncio.run(scenario())
    assert durable is True
    assert after == [False]


def test_a_failed_original_frees_its_keys_for_the_retry() -> None:
    async def scenario() -> tuple[bool, list[object]]:
        deduper = Deduper(capacity=10)
        owner = asyncio.get_running_loop().create_future()
        deduper.claim([b"a", b"b"], owner)
        (pending,) = deduper.claim([b"a"], None)
        deduper.settle([b"a", b"b"], owner, durable=False)
        assert isinstance(pending, asyncio.Future)
        return await pending, deduper.claim([b"a", b"b"], None)

    durable, again = asyncio.run(scenario())
    assert durable is False
    assert again == [True, True]


def test_warming_remembers_the_newest_keys() -> None:
    deduper = Deduper(capacity=4)
    deduper.warm([b"new", b"mid", b"old1", b"old2", b"old3", b"old4"])
    assert deduper.claim([b"new", b"mid"], None) == [False, False]
