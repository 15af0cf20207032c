"""Checks every event log backend passes, then each backend's own."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType
from nats.js.errors import NotFoundError

from remarket.errors import StorageError
from remarket.storage.log import EventLog, LogEntry, SQLiteLog
from remarket.storage.log.nats import NatsLog

PARTITIONS = 4

Opener = Callable[[], Awaitable[EventLog]]
Scenario = Callable[[EventLog], Awaitable[None]]


def _entry(i: int, partition: int | None = None, *, key: bytes | None = None) -> LogEntry:
    return LogEntry(
        payload=f'{{"i":{i}}}'.encode(),
        partition=i % PARTITIONS if partition is None else partition,
        dedupe_key=key if key is not None else f"key-{i}".encode(),
    )


def _run(open_log: Opener, scenario: Scenario) -> None:
    async def main() -> None:
        log = await open_log()
        try:
            await scenario(log)
        finally:
            await log.close()

    asyncio.run(main())


async def _drop_stream(url: str, name: str) -> None:
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(name)
        with contextlib.suppress(NotFoundError):
            await js.delete_key_value(f"{name}_offsets")
    finally:
        await nc.close()


@pytest.fixture
def sqlite_opener(tmp_path: Path) -> Opener:
    async def opener() -> EventLog:
        return SQLiteLog(tmp_path / "log.db")

    return opener


@pytest.fixture
def nats_opener(nats_url: str, unique_name: str) -> Iterator[Opener]:
    async def opener() -> EventLog:
        return await NatsLog.connect(
            nats_url,
            stream=unique_name,
            subject_prefix=f"{unique_name}.events",
            partitions=PARTITIONS,
            duplicate_window_s=60,
        )

    yield opener
    asyncio.run(_drop_stream(nats_url, unique_name))


@pytest.fixture(params=["sqlite", pytest.param("nats", marks=pytest.mark.nats)])
def open_log(request: pytest.FixtureRequest) -> Opener:
    opener: Opener = request.getfixturevalue(f"{request.param}_opener")
    return opener


# -- shared checks ------------------------------------------------------------------


def test_append_returns_increasing_offsets_and_read_returns_the_payloads(
    open_log: Opener,
) -> None:
    async def scenario(log: EventLog) -> None:
        entries = [_entry(i) for i in range(20)]
        first = await log.append(entries[:12])
        second = await log.append(entries[12:])
        offsets = first + second
        assert offsets[0] > 0
        assert offsets == sorted(set(offsets))
        records = await log.read(0, 100)
        assert [r.payload for r in records] == [e.payload for e in entries]
        assert [r.offset for r in records] == offsets
        assert [r.partition for r in records] == [e.partition for e in entries]
        assert await log.append([]) == []

    _run(open_log, scenario)


def test_read_pages_through_with_after_and_limit(open_log: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        offsets = await log.append([_entry(i) for i in range(25)])
        pages, after = [], 0
        while page := await log.read(after, 10):
            pages.append([r.offset for r in page])
            after = page[-1].offset
        assert [len(p) for p in pages] == [10, 10, 5]
        assert [o for p in pages for o in p] == offsets
        assert await log.read(offsets[-1], 10) == []
        assert [r.offset for r in await log.read(offsets[3], 2)] == offsets[4:6]
        assert await log.read(0, 0) == []

    _run(open_log, scenario)


def test_read_keeps_to_the_partitions_asked_for(open_log: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        entries = [_entry(i) for i in range(40)]
        offsets = await log.append(entries)
        for wanted in ({1}, {0, 2}, {0, 1, 2, 3}):
            expected = [o for o, e in zip(offsets, entries, strict=True) if e.partition in wanted]
            records = await log.read(0, 100, partitions=wanted)
            assert [r.offset for r in records] == expected
            assert {r.partition for r in records} == wanted
            limited = await log.read(expected[2], 3, partitions=wanted)
            assert [r.offset for r in limited] == expected[3:6]
        assert await log.read(0, 100, partitions=set()) == []

    _run(open_log, scenario)


def test_read_with_wait_returns_as_soon_as_a_record_arrives(open_log: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        [before] = await log.append([_entry(0, 0)])

        async def append_later() -> list[int]:
            await asyncio.sleep(0.3)
            # A record of another partition must not end a filtered wait.
            await log.append([_entry(1, 1)])
            await asyncio.sleep(0.3)
            return await log.append([_entry(2, 2)])

        started = time.monotonic()
        writer = asyncio.create_task(append_later())
        records = await log.read(before, 10, wait=20.0, partitions={2, 3})
        elapsed = time.monotonic() - started
        assert [r.offset for r in records] == await writer
        assert 0.5 <= elapsed < 10.0

    _run(open_log, scenario)


def test_read_with_wait_times_out_empty(open_log: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        started = time.monotonic()
        assert await log.read(0, 10, wait=0.4) == []
        assert 0.35 <= time.monotonic() - started < 5.0
        [offset] = await log.append([_entry(0, 0)])
        started = time.monotonic()
        assert await log.read(offset, 10, wait=0.4, partitions={0, 1}) == []
        assert 0.35 <= time.monotonic() - started < 5.0

    _run(open_log, scenario)


def test_end_offset_is_the_newest_offset(open_log: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        assert await log.end_offset() == 0
        offsets = await log.append([_entry(i) for i in range(7)])
        assert await log.end_offset() == offsets[-1]

    _run(open_log, scenario)


def test_commit_records_each_consumers_last_offset(open_log: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        assert await log.committed() == {}
        await log.commit("warehouse", 5)
        await log.commit("segments worker/ü.1", 7)
        await log.commit("warehouse", 9)
        assert await log.committed() == {"warehouse": 9, "segments worker/ü.1": 7}

    _run(open_log, scenario)


def test_recent_dedupe_keys_come_newest_first(open_log: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        assert await log.recent_dedupe_keys(5) == []
        keys = [bytes([i]) * 16 for i in range(10)]
        await log.append([_entry(i, key=k) for i, k in enumerate(keys)])
        assert await log.recent_dedupe_keys(3) == keys[:-4:-1]
        assert await log.recent_dedupe_keys(100) == keys[::-1]

    _run(open_log, scenario)


def test_concurrent_appends_all_land_exactly_once(open_log: Opener) -> None:
    tasks, per_task = 50, 100

    async def scenario(log: EventLog) -> None:
        async def writer(t: int) -> list[int]:
            return await log.append([_entry(t * per_task + i) for i in range(per_task)])

        results = await asyncio.gather(*(writer(t) for t in range(tasks)))
        for offsets in results:
            assert offsets == sorted(offsets)
        records = await log.read(0, tasks * per_task + 1)
        assert len(records) == tasks * per_task
        assert [r.offset for r in records] == sorted(o for offsets in results for o in offsets)
        offset_of = {r.payload: r.offset for r in records}
        for t, offsets in enumerate(results):
            payloads = [_entry(t * per_task + i).payload for i in range(per_task)]
            assert [offset_of[p] for p in payloads] == offsets

    _run(open_log, scenario)


def test_everything_survives_close_and_reopen(open_log: Opener) -> None:
    entries = [_entry(i) for i in range(30)]
    written: list[int] = []

    async def write(log: EventLog) -> None:
        written.extend(await log.append(entries))
        await log.commit("profiles", written[9])

    async def check(log: EventLog) -> None:
        records = await log.read(0, 100)
        assert [(r.offset, r.payload) for r in records] == [
            (o, e.payload) for o, e in zip(written, entries, strict=True)
        ]
        assert await log.end_offset() == written[-1]
        assert await log.committed() == {"profiles": written[9]}
        assert await log.recent_dedupe_keys(2) == [entries[-1].dedupe_key, entries[-2].dedupe_key]

    _run(open_log, write)
    _run(open_log, check)


# -- SQLite only --------------------------------------------------------------------


def test_sqlite_reopened_log_continues_after_the_last_offset(sqlite_opener: Opener) -> None:
    first: list[int] = []

    async def write(log: EventLog) -> None:
        first.extend(await log.append([_entry(i) for i in range(5)]))

    async def write_more(log: EventLog) -> None:
        more = await log.append([_entry(i) for i in range(5, 8)])
        assert more == list(range(first[-1] + 1, first[-1] + 4))

    _run(sqlite_opener, write)
    _run(sqlite_opener, write_more)


def test_sqlite_logs_sharing_a_file_never_share_an_offset(tmp_path: Path) -> None:
    async def scenario() -> None:
        ours, theirs = SQLiteLog(tmp_path / "log.db"), SQLiteLog(tmp_path / "log.db")
        try:
            results = await asyncio.gather(
                *(
                    (ours if t % 2 else theirs).append([_entry(t * 10 + i) for i in range(10)])
                    for t in range(20)
                )
            )
            offsets = [o for r in results for o in r]
            assert sorted(offsets) == list(range(1, 201))
            records = await ours.read(0, 500)
            assert [r.offset for r in records] == list(range(1, 201))
            by_offset = {r.offset: r.payload for r in records}
            for t, result in enumerate(results):
                assert [by_offset[o] for o in result] == [
                    _entry(t * 10 + i).payload for i in range(10)
                ]
        finally:
            await ours.close()
            await theirs.close()

    asyncio.run(scenario())


def test_sqlite_view_shows_one_row_per_event(tmp_path: Path) -> None:
    entries = [_entry(i, key=bytes([i]) * (i + 1)) for i in range(5)]

    async def write(log: EventLog) -> None:
        await log.append(entries[:2])
        await log.append(entries[2:])

    _run(lambda: _sqlite(tmp_path), write)
    with contextlib.closing(sqlite3.connect(tmp_path / "log.db")) as db:
        rows = db.execute("SELECT offset, partition, dedupe, payload FROM log").fetchall()
    assert rows == [(i + 1, e.partition, e.dedupe_key, e.payload) for i, e in enumerate(entries)]


def test_sqlite_refuses_a_file_of_the_old_layout(tmp_path: Path) -> None:
    with contextlib.closing(sqlite3.connect(tmp_path / "log.db")) as db:
        db.execute("CREATE TABLE log (offset INTEGER PRIMARY KEY, payload BLOB)")
    with pytest.raises(StorageError, match="layout 1; this version reads layout 2"):
        SQLiteLog(tmp_path / "log.db")


def test_sqlite_a_bad_entry_fails_only_its_own_append(tmp_path: Path) -> None:
    async def scenario(log: EventLog) -> None:
        bad = LogEntry(b"{}", "1", b"k")  # type: ignore[arg-type]
        good = log.append([_entry(0)])
        with pytest.raises(ValueError, match="partition must be an int"):
            await log.append([bad])
        assert await good == [1]

    _run(lambda: _sqlite(tmp_path), scenario)


async def _sqlite(tmp_path: Path) -> EventLog:
    return SQLiteLog(tmp_path / "log.db")


# -- NATS only ----------------------------------------------------------------------


@pytest.mark.nats
def test_nats_drops_a_duplicate_key_within_the_window(nats_opener: Opener) -> None:
    async def scenario(log: EventLog) -> None:
        first, again = await log.append([_entry(0, key=b"same"), _entry(1, key=b"same")])
        assert first > 0
        assert again == 0
        assert await log.append([_entry(2, key=b"same"), _entry(3)]) == [0, first + 1]
        records = await log.read(0, 10)
        assert [r.payload for r in records] == [_entry(0).payload, _entry(3).payload]

    _run(nats_opener, scenario)


@pytest.mark.nats
def test_nats_server_errors_surface_as_storage_errors(
    nats_opener: Opener, nats_url: str, unique_name: str
) -> None:
    async def scenario(log: EventLog) -> None:
        with pytest.raises(ValueError, match="partition must be in"):
            await log.append([_entry(0, PARTITIONS)])
        await _drop_stream(nats_url, unique_name)
        with pytest.raises(StorageError, match="append"):
            await log.append([_entry(0)])
        with pytest.raises(StorageError, match="read"):
            await log.read(0, 10)
        with pytest.raises(StorageError):
            await log.end_offset()

    _run(nats_opener, scenario)


@pytest.mark.nats
def test_nats_connect_brings_an_existing_stream_up_to_date(
    nats_url: str, unique_name: str, nats_opener: Opener
) -> None:
    async def scenario() -> float:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=unique_name, subjects=["elsewhere.*"], max_msgs=1000)
            log = await nats_opener()
            await log.close()
            config = (await js.stream_info(unique_name)).config
        finally:
            await nc.close()
        assert config.subjects == [f"{unique_name}.events.*"]
        assert config.max_msgs == 1000
        return config.duplicate_window

    assert asyncio.run(scenario()) == 60


@pytest.mark.nats
def test_nats_connect_refuses_a_memory_stream(
    nats_url: str, unique_name: str, nats_opener: Opener
) -> None:
    async def scenario() -> None:
        nc = await nats.connect(nats_url)
        try:
            await nc.jetstream().add_stream(
                name=unique_name, subjects=[f"{unique_name}.events.*"], storage=StorageType.MEMORY
            )
        finally:
            await nc.close()
        with pytest.raises(StorageError, match="needs file"):
            await nats_opener()

    asyncio.run(scenario())


def test_nats_connect_rejects_bad_names_and_absent_servers(unique_name: str) -> None:
    def connect(url: str, stream: str, prefix: str) -> Awaitable[NatsLog]:
        return NatsLog.connect(
            url,
            stream=stream,
            subject_prefix=prefix,
            partitions=PARTITIONS,
            duplicate_window_s=60,
            timeout=1.0,
        )

    with pytest.raises(ValueError, match="stream name"):
        asyncio.run(connect("nats://127.0.0.1:1", "a.b", unique_name))
    with pytest.raises(ValueError, match="subject prefix"):
        asyncio.run(connect("nats://127.0.0.1:1", unique_name, "events.*"))
    with pytest.raises(StorageError, match="connect"):
        asyncio.run(connect("nats://127.0.0.1:1", unique_name, unique_name))
