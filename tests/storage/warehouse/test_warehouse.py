"""The warehouse contract, checked on DuckDB and PostgreSQL alike, and checked to agree."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import psycopg
import pytest
import sqlglot
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from remarket.errors import OffsetConflict, StorageError
from remarket.schema.events import Alias, Group, Identify, Message, Page, Screen, Track
from remarket.storage.warehouse import EVENT_COLUMNS, DuckDBWarehouse, Warehouse
from remarket.storage.warehouse.base import decode_cursor, encode_cursor
from remarket.storage.warehouse.postgres import PostgresWarehouse
from tests.storage.warehouse.holder import held_elsewhere
from tests.storage.warehouse.served import ServedDuckDB

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
JSON_COLUMNS = ("properties", "traits", "context")
COLUMNS = ", ".join(f'"{c}"' for c in EVENT_COLUMNS)


@dataclass(frozen=True)
class Backend:
    """How to open (and reopen) one warehouse, and how it reports a NOT NULL violation."""

    open: Callable[[], Warehouse]
    not_null_error: type[Exception]


@pytest.fixture(
    params=[
        pytest.param("duckdb", id="duckdb"),
        pytest.param("remote", id="duckdb-over-socket"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    path = tmp_path / "warehouse.duckdb"
    if request.param == "duckdb":
        return Backend(lambda: DuckDBWarehouse(path), duckdb.ConstraintException)
    if request.param == "remote":
        return Backend(lambda: ServedDuckDB(path), duckdb.ConstraintException)
    url: str = request.getfixturevalue("pg_database")
    return Backend(lambda: PostgresWarehouse(url), psycopg.errors.NotNullViolation)


@pytest.fixture
def warehouse(backend: Backend) -> Iterator[Warehouse]:
    wh = backend.open()
    yield wh
    wh.close()


def track(
    anonymous_id: str | None = "a1",
    user_id: str | None = None,
    at: datetime | None = T0,
    event: str = "Product Viewed",
    properties: bytes = b'{"sku": "p-1"}',
) -> Track:
    return Track(
        event=event,
        anonymous_id=anonymous_id,
        user_id=user_id,
        timestamp=at,
        received_at=T0,
        properties=msgspec.Raw(properties),
    )


def offsets_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["offset"] for e in events]


def test_write_events_then_count(warehouse: Warehouse) -> None:
    assert warehouse.count_events() == 0
    assert warehouse.committed("warehouse") == 0
    warehouse.write_events("warehouse", [(1, track()), (2, track()), (3, track())], 3, expected=0)
    assert warehouse.count_events() == 3
    assert warehouse.committed("warehouse") == 3


def test_offset_may_pass_the_last_event_and_is_per_consumer(warehouse: Warehouse) -> None:
    warehouse.write_events("one", [(4, track())], 9, expected=0)
    warehouse.write_events("two", [], 12, expected=0)
    assert (warehouse.committed("one"), warehouse.committed("two")) == (9, 12)
    assert warehouse.count_events() == 1


def test_failed_batch_changes_neither_rows_nor_offset(
    warehouse: Warehouse, backend: Backend
) -> None:
    warehouse.write_events("warehouse", [(1, track()), (2, track())], 2, expected=0)
    bad = [(3, track()), (4, track(at=None)), (5, track())]
    with pytest.raises(backend.not_null_error):
        warehouse.write_events("warehouse", bad, 5, expected=2)
    assert (warehouse.count_events(), warehouse.committed("warehouse")) == (2, 2)
    # The same warehouse object takes the corrected batch: the failure left nothing open.
    warehouse.write_events("warehouse", [(3, track()), (4, track()), (5, track())], 5, expected=2)
    assert (warehouse.count_events(), warehouse.committed("warehouse")) == (5, 5)


def test_reopening_keeps_events_and_offsets(backend: Backend) -> None:
    wh = backend.open()
    wh.write_events("warehouse", [(1, track()), (2, track(user_id="u1"))], 2, expected=0)
    wh.upsert_identities([("anonymous_id", "a1", "p1")])
    wh.close()
    wh = backend.open()
    try:
        assert (wh.count_events(), wh.committed("warehouse")) == (2, 2)
        assert wh.query("SELECT profile_id FROM identities") == [("p1",)]
    finally:
        wh.close()


def test_profile_events_by_anonymous_id(warehouse: Warehouse) -> None:
    warehouse.write_events(
        "w",
        [(1, track("a1")), (2, track("a2")), (3, track("a1", "u1")), (4, track(None, "u1"))],
        4,
        expected=0,
    )
    page = warehouse.profile_events(["a1"], [], limit=10)
    assert offsets_of(page.events) == [3, 1]
    assert page.next_cursor is None
    assert offsets_of(warehouse.profile_events(["a1", "a2"], [], limit=10).events) == [3, 2, 1]


def test_profile_events_by_user_id(warehouse: Warehouse) -> None:
    warehouse.write_events(
        "w",
        [(1, track("a1")), (2, track("a2", "u1")), (3, track(None, "u1")), (4, track(None, "u2"))],
        4,
        expected=0,
    )
    assert offsets_of(warehouse.profile_events([], ["u1"], limit=10).events) == [3, 2]
    # An event carrying both of a person's ids comes once.
    both = warehouse.profile_events(["a1", "a2"], ["u1"], limit=10)
    assert offsets_of(both.events) == [3, 2, 1]


def test_profile_events_with_no_ids_is_empty(warehouse: Warehouse) -> None:
    warehouse.write_events("w", [(1, track("a1"))], 1, expected=0)
    page = warehouse.profile_events([], [], limit=10)
    assert (page.events, page.next_cursor) == ([], None)


def test_profile_events_newest_first_by_timestamp_then_offset(warehouse: Warehouse) -> None:
    at = [T0, T0 + timedelta(hours=1), T0 - timedelta(days=3), T0 + timedelta(hours=1), T0]
    warehouse.write_events("w", [(i + 1, track(at=t)) for i, t in enumerate(at)], 5, expected=0)
    events = warehouse.profile_events(["a1"], [], limit=10).events
    assert offsets_of(events) == [4, 2, 5, 1, 3]
    assert [e["timestamp"] for e in events] == sorted(at, reverse=True)


def test_profile_events_columns_and_types(warehouse: Warehouse) -> None:
    warehouse.write_events(
        "w", [(1, track(properties=b'{"price": 9.5, "tags": ["a"]}'))], 1, expected=0
    )
    (event,) = warehouse.profile_events(["a1"], [], limit=1).events
    assert tuple(event) == EVENT_COLUMNS
    assert event["offset"] == 1 and event["type"] == "track" and event["traits"] is None
    assert event["timestamp"] == T0 and event["timestamp"].utcoffset() == timedelta(0)
    assert isinstance(event["properties"], str)
    assert json.loads(event["properties"]) == {"price": 9.5, "tags": ["a"]}
    assert json.loads(event["context"]) == {}


@pytest.mark.parametrize(
    "cursor",
    ["yesterday", "1.2.3", "1e5.1", "99999999999999999999999.1", "0.99999999999999999999"],
)
def test_cursor_from_elsewhere_is_refused(warehouse: Warehouse, cursor: str) -> None:
    with pytest.raises(ValueError, match="not one this API issued"):
        warehouse.profile_events(["a1"], [], limit=5, cursor=cursor)


@example(at=datetime(1969, 9, 22, 11, 53, 4, 999833, tzinfo=UTC), offset=1)
@example(at=datetime(2004, 7, 10, 1, 52, 36, 220841, tzinfo=UTC), offset=2**63 - 1)
@given(at=st.datetimes(timezones=st.just(UTC)), offset=st.integers(0, 2**63 - 1))
def test_cursor_names_exactly_the_row_it_was_cut_at(at: datetime, offset: int) -> None:
    assert decode_cursor(encode_cursor(at, offset)) == (at, offset)


@pytest.mark.parametrize(
    "at",
    [
        pytest.param(datetime(2004, 7, 10, 1, 52, 36, 220841, tzinfo=UTC), id="2004"),
        pytest.param(datetime(2040, 5, 16, 16, 4, 50, 116420, tzinfo=UTC), id="2040"),
    ],
)
def test_page_cut_inside_a_timestamp_tie(warehouse: Warehouse, at: datetime) -> None:
    # Float seconds put these instants a microsecond off in the cursor, losing tied rows.
    rows: list[tuple[int, Message]] = [
        (1, track(at=at)),
        (2, track(at=at)),
        (3, track(at=at - timedelta(days=1))),
    ]
    warehouse.write_events("w", rows, 3, expected=0)
    first = warehouse.profile_events(["a1"], [], limit=1)
    rest = warehouse.profile_events(["a1"], [], limit=5, cursor=first.next_cursor)
    assert offsets_of(first.events + rest.events) == [2, 1, 3]


_MOMENTS = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
_OWNERS = st.sampled_from(["anonymous", "user", "both", "stranger"])


@settings(
    max_examples=60,
    deadline=None,
    # Each example writes under ids of its own, so examples sharing the warehouse
    # cannot see each other's events.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    moments=st.lists(_MOMENTS, min_size=1, max_size=8),
    picks=st.lists(st.tuples(st.integers(0, 7), _OWNERS), max_size=30),
    data=st.data(),
)
def test_cursor_paging_has_no_gaps_or_repeats(
    warehouse: Warehouse,
    moments: list[datetime],
    picks: list[tuple[int, str]],
    data: st.DataObject,
) -> None:
    person = uuid.uuid4().hex
    anon, user, stranger = f"a-{person}", f"u-{person}", f"s-{person}"
    ids = {
        "anonymous": (anon, None),
        "user": (None, user),
        "both": (anon, user),
        "stranger": (stranger, None),
    }
    start = warehouse.committed("paging")
    rows: list[tuple[int, Message]] = []
    for n, (moment, owner) in enumerate(picks, start=start + 1):
        # Few distinct moments for many events: plenty of timestamp ties.
        rows.append((n, track(*ids[owner], at=moments[moment % len(moments)])))
    warehouse.write_events("paging", rows, start + len(rows), expected=start)
    mine = ((m.timestamp, off) for off, m in rows if m.anonymous_id != stranger)
    expected = [off for _, off in sorted(mine, reverse=True)]

    seen: list[int] = []
    cursor: str | None = None
    while True:
        limit = data.draw(st.integers(1, 7), label="page size")
        page = warehouse.profile_events([anon], [user], limit=limit, cursor=cursor)
        assert len(page.events) == min(limit, len(expected) - len(seen))
        seen += offsets_of(page.events)
        assert (page.next_cursor is None) == (len(seen) == len(expected))
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected


def test_upsert_identities_inserts_and_repoints(warehouse: Warehouse) -> None:
    warehouse.upsert_identities([])
    warehouse.upsert_identities([("anonymous_id", "a1", "p1"), ("user_id", "u1", "p1")])
    warehouse.upsert_identities([("anonymous_id", "a1", "p2"), ("anonymous_id", "a2", "p2")])
    assert warehouse.query("SELECT kind, value, profile_id FROM identities ORDER BY 1, 2") == [
        ("anonymous_id", "a1", "p2"),
        ("anonymous_id", "a2", "p2"),
        ("user_id", "u1", "p1"),
    ]


def test_erase_removes_the_persons_events_and_identities_only(warehouse: Warehouse) -> None:
    rows = [
        (1, track(anonymous_id="gone-a")),
        (2, track(anonymous_id=None, user_id="gone-u")),
        (3, track(anonymous_id="kept-a")),
    ]
    warehouse.write_events("w", rows, 3, expected=0)
    gone = [("anonymous_id", "gone-a", "p-gone"), ("user_id", "gone-u", "p-gone")]
    warehouse.upsert_identities([*gone, ("anonymous_id", "kept-a", "p-kept")])
    ids, profiles = ["gone-a", "gone-u"], ["p-gone"]
    assert warehouse.residue(ids, profiles) == 4  # two events, two identity rows
    assert warehouse.erase(ids, profiles) == 4
    assert warehouse.residue(ids, profiles) == 0
    assert warehouse.count_events() == 1
    assert warehouse.query("SELECT profile_id FROM identities") == [("p-kept",)]


def test_query_binds_params_in_its_dialect(warehouse: Warehouse) -> None:
    warehouse.write_events("w", [(1, track(event="Order Completed")), (2, track())], 2, expected=0)
    # Written once with ? placeholders and transpiled, as generated SQL is.
    sql = sqlglot.transpile(
        'SELECT "offset" FROM events WHERE event = ? AND type LIKE ?',
        read="duckdb",
        write=warehouse.dialect,
    )[0]
    assert warehouse.query(sql, ["Order Completed", "tr%"]) == [(1,)]
    # Without params a literal % is plain SQL, not a placeholder.
    assert warehouse.query("SELECT count(*) FROM events WHERE type LIKE 'tr%'") == [(2,)]


def test_concurrent_reads_while_writing(warehouse: Warehouse) -> None:
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                warehouse.profile_events(["a1"], [], limit=5)
                warehouse.count_events()
        except Exception as exc:
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for r in readers:
        r.start()
    for batch in range(20):
        rows = [(batch * 50 + i + 1, track()) for i in range(50)]
        warehouse.write_events("w", rows, rows[-1][0], expected=batch * 50)
    done.set()
    for r in readers:
        r.join()
    assert errors == []
    assert warehouse.count_events() == 1000


def test_identity_upserts_and_event_loads_in_two_threads_both_land(
    warehouse: Warehouse,
) -> None:
    """The profile worker's identity mirror and the warehouse worker's loads run side by
    side (separate locks on DuckDB): neither loses rows nor fails."""
    errors: list[Exception] = []

    def mirror() -> None:
        try:
            for batch in range(20):
                rows = [("anonymous_id", f"a{batch}-{i}", f"p{batch}") for i in range(50)]
                warehouse.upsert_identities(rows)
                warehouse.upsert_identities([(k, v, "p-moved") for k, v, _ in rows[:5]])
        except Exception as exc:
            errors.append(exc)

    thread = threading.Thread(target=mirror)
    thread.start()
    for batch in range(20):
        rows = [(batch * 50 + i + 1, track()) for i in range(50)]
        warehouse.write_events("w", rows, rows[-1][0], expected=batch * 50)
    thread.join()
    assert errors == []
    assert warehouse.count_events() == 1000
    assert warehouse.query(
        "SELECT count(*), count(DISTINCT value) FROM identities WHERE profile_id = 'p-moved'"
    ) == [(100, 100)]
    assert warehouse.query("SELECT count(*) FROM identities") == [(1000,)]


def _varied_messages() -> list[Message]:
    """One of every message type, with the awkward values: escapes, unicode, nulls, naive time."""
    ctx = msgspec.Raw(b'{"ip": "10.0.0.1", "page": {"url": "https://x.test/?q=a\\"b"}}')
    return [
        Track(
            event="Order Completed",
            message_id="m-1",
            source_id="src",
            anonymous_id="a1",
            timestamp=T0,
            original_timestamp=T0 - timedelta(seconds=3),
            sent_at=T0 + timedelta(microseconds=7),
            received_at=T0 + timedelta(seconds=1),
            context=ctx,
            properties=msgspec.Raw(
                b'{"total": 12.5, "items": [{"sku": "p\\\\1"}], "note": "caf\xc3\xa9 \\u2603"}'
            ),
        ),
        Identify(
            user_id="u1",
            anonymous_id="a1",
            timestamp=T0 + timedelta(minutes=1),
            received_at=T0,
            traits=msgspec.Raw(b'{"email": "x@y.test", "plan": null}'),
        ),
        Page(
            anonymous_id="a1",
            name="Home",
            category="Landing",
            timestamp=datetime(2024, 5, 1, 13, 30),  # naive: taken as UTC
            received_at=T0,
        ),
        Screen(user_id="u1", name="Cart", timestamp=T0 - timedelta(days=1), received_at=T0),
        Group(user_id="u1", group_id=42, timestamp=T0, received_at=T0),
        Alias(user_id="u1", previous_id="a1", timestamp=T0, received_at=T0),
    ]


def _normal(row: dict[str, Any]) -> dict[str, Any]:
    return {k: json.loads(v) if k in JSON_COLUMNS and v is not None else v for k, v in row.items()}


@pytest.mark.postgres
def test_duckdb_and_postgres_return_the_same(pg_database: str, tmp_path: Path) -> None:
    rows = list(enumerate(_varied_messages(), start=101))
    identities = [
        ("anonymous_id", "a1", "p1"),
        ("user_id", "u1", "p1"),
        ("anonymous_id", "a1", "p2"),
    ]
    results: list[tuple[Any, ...]] = []
    for wh in (DuckDBWarehouse(tmp_path / "w.duckdb"), PostgresWarehouse(pg_database)):
        try:
            wh.write_events("w", rows, 110, expected=0)
            wh.upsert_identities(identities)
            events = wh.profile_events(["a1"], ["u1"], limit=4).events
            cursor = wh.profile_events(["a1"], ["u1"], limit=4).next_cursor
            rest = wh.profile_events(["a1"], ["u1"], limit=4, cursor=cursor).events
            table = wh.query(f"SELECT {COLUMNS} FROM events ORDER BY 1")
            ids = wh.query("SELECT * FROM identities ORDER BY kind, value")
            results.append((events + rest, table, ids, wh.committed("w"), wh.count_events()))
        finally:
            wh.close()
    (duck_events, duck_table, *duck_rest), (pg_events, pg_table, *pg_rest) = results

    assert len(duck_events) == len(rows)
    assert [_normal(e) for e in duck_events] == [_normal(e) for e in pg_events]
    for duck, pg in zip(duck_events, pg_events, strict=True):
        assert {k: type(v) for k, v in duck.items()} == {k: type(v) for k, v in pg.items()}
    duck_dicts = [_normal(dict(zip(EVENT_COLUMNS, r, strict=True))) for r in duck_table]
    pg_dicts = [_normal(dict(zip(EVENT_COLUMNS, r, strict=True))) for r in pg_table]
    assert duck_dicts == pg_dicts
    assert duck_rest == pg_rest == [[("anonymous_id", "a1", "p2"), ("user_id", "u1", "p1")], 110, 6]


def test_numeric_ids_are_stored_as_strings(warehouse: Warehouse) -> None:
    # Segment lets ids arrive as numbers; events.py keeps them, the warehouse stores text.
    message = Track(event="e", anonymous_id=7, user_id=8, timestamp=T0, received_at=T0)
    warehouse.write_events("w", [(1, message)], 1, expected=0)
    (event,) = warehouse.profile_events(["7"], [], limit=1).events
    assert (event["anonymous_id"], event["user_id"]) == ("7", "8")


@pytest.mark.postgres
def test_postgres_reconnects_after_the_server_drops_it(pg_database: str) -> None:
    wh = PostgresWarehouse(pg_database)
    try:
        wh.write_events("w", [(1, track())], 1, expected=0)
        with psycopg.connect(pg_database, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        # The call in flight on each dropped connection fails; the retry goes through.
        with pytest.raises(psycopg.OperationalError):
            wh.count_events()
        with pytest.raises(psycopg.OperationalError):
            wh.write_events("w", [(2, track())], 2, expected=1)
        wh.write_events("w", [(2, track())], 2, expected=1)
        assert (wh.count_events(), wh.committed("w")) == (2, 2)
    finally:
        wh.close()


def test_a_stale_writer_is_refused_and_changes_nothing(warehouse: Warehouse) -> None:
    warehouse.write_events("w", [(1, track()), (2, track())], 2, expected=0)
    # A second worker that still believes the consumer is at 0 must not apply 1..2 again.
    with pytest.raises(OffsetConflict):
        warehouse.write_events("w", [(1, track()), (2, track())], 2, expected=0)
    with pytest.raises(OffsetConflict):
        warehouse.write_events("w", [(3, track())], 3, expected=1)
    assert (warehouse.count_events(), warehouse.committed("w")) == (2, 2)
    warehouse.write_events("w", [(3, track())], 3, expected=2)
    assert (warehouse.count_events(), warehouse.committed("w")) == (3, 3)


def test_compaction_takes_erased_rows_out_of_the_file(tmp_path: Path) -> None:
    """DuckDB keeps a few deleted rows in their row group's blocks; a compaction copies the
    database without them, keeps everything else, and the warehouse goes on working."""
    path = tmp_path / "warehouse.duckdb"
    wh = DuckDBWarehouse(path)
    rows = [(n, track(anonymous_id=f"kept-{n % 50}")) for n in range(1, 3001)]
    rows.append((3001, track(anonymous_id="gone-a", user_id="gone-u")))
    wh.write_events("w", rows, 3001, expected=0)
    wh.upsert_identities([("anonymous_id", "gone-a", "p-gone"), ("anonymous_id", "kept-1", "p-1")])
    wh.query("CHECKPOINT")
    assert wh.erase(["gone-a", "gone-u"], ["p-gone"]) == 2
    wh.query("CHECKPOINT")
    assert b"gone-a" in path.read_bytes()  # deleted, but still in the file
    everything = 'SELECT * FROM events ORDER BY "offset"'
    before = (wh.query(everything), wh.query("SELECT * FROM identities"), wh.committed("w"))
    path.with_name("warehouse.duckdb.compacting").write_bytes(b"a crashed compaction's copy")
    assert wh.compacted_through() == 0

    wh.compact(7)

    assert b"gone-a" not in path.read_bytes() and b"gone-u" not in path.read_bytes()
    assert (wh.query(everything), wh.query("SELECT * FROM identities"), wh.committed("w")) == before
    assert wh.compacted_through() == 7
    assert [p.name for p in tmp_path.iterdir()] == ["warehouse.duckdb"]
    wh.write_events("w", [(3002, track())], 3002, expected=3001)
    wh.close()
    reopened = DuckDBWarehouse(path)
    assert reopened.count_events() == 3001 and reopened.compacted_through() == 7
    reopened.close()


def test_opening_waits_for_another_processs_lock_only_when_asked(tmp_path: Path) -> None:
    """A worker process that went down with its server still closes the file for a
    moment: the next one waits for it; anything else (a CLI command) fails at once."""
    path = tmp_path / "warehouse.duckdb"
    with held_elsewhere(path, seconds=1.5) as pid:
        with pytest.raises(StorageError, match=rf"in use by another process \(PID {pid}\)") as busy:
            DuckDBWarehouse(path)
        assert busy.value.field == "warehouse_url"
        started = time.monotonic()
        waited = DuckDBWarehouse(path, lock_wait_s=30)
        assert 0.5 < time.monotonic() - started < 30
        assert waited.count_events() == 0
        waited.close()
