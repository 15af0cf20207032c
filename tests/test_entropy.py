"""Random bytes in bulk: never handed out twice, and not shared with a forked child."""

from __future__ import annotations

import os
import uuid

import pytest

from remarket.entropy import RandomPool, random_uuid


def test_slices_across_refills_are_all_different() -> None:
    pool = RandomPool(refill=100)  # a refill every three keys
    keys = [pool.take(32) for _ in range(1_000)]
    assert all(len(k) == 32 for k in keys)
    assert len(set(keys)) == len(keys)


def test_a_request_larger_than_the_refill_is_served_whole() -> None:
    pool = RandomPool(refill=16)
    assert len(pool.take(64)) == 64
    assert len(pool.take(8)) == 8


def test_the_refill_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refill"):
        RandomPool(refill=0)


def test_a_forked_child_does_not_hand_out_the_parents_bytes() -> None:
    pool = RandomPool()
    pool.take(32)  # the pool now holds bytes the parent will hand out next
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read)
        os.write(write, pool.take(32))
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 32
    assert child != pool.take(32)


def test_random_uuids_are_version_4_and_distinct() -> None:
    made = {random_uuid() for _ in range(10_000)}
    assert len(made) == 10_000
    assert {uuid.UUID(u).version for u in made} == {4}
