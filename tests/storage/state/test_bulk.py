"""Rows written through the driver are stored exactly as SQLAlchemy's own inserts store
them, on SQLite and PostgreSQL; a row whose key exists can replace the old one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import Engine, select

from remarket.schema.events import as_utc
from remarket.storage.state import segment_history, segment_outbox, segment_timers
from remarket.storage.state.bulk import bulk_insert


def test_rows_are_stored_as_sqlalchemy_stores_them(state_engine: Engine) -> None:
    times = [
        datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=UTC),
        datetime(2026, 3, 29, 4, 0, 0, 1, tzinfo=timezone(timedelta(hours=2))),
    ]
    rows = [
        {"segment": "s'quote", "version": 1, "profile_id": f"p_{n}", "kind": "entered"}
        | {"at": at, "seq": 1}
        for n, at in enumerate(times)
    ]
    outbox = {"message_id": "m", "profile_id": "p_1", "payload": b"\x00{}", "created_at": times[0]}
    with state_engine.begin() as conn:
        conn.execute(segment_history.insert(), rows)
        bulk_insert(conn, segment_history, [row | {"seq": 2} for row in rows])
        conn.execute(segment_outbox.insert(), [outbox])
        bulk_insert(conn, segment_outbox, [outbox | {"message_id": "m2"}])
        bulk_insert(conn, segment_outbox, [])  # nothing to write: no SQL
        stored = conn.exec_driver_sql(
            "SELECT seq, profile_id, segment, CAST(at AS TEXT) FROM segment_history"
        ).all()
        payloads = conn.execute(select(segment_outbox.c.payload)).scalars().all()
    by_seq = {seq: sorted(row[1:] for row in stored if row[0] == seq) for seq in (1, 2)}
    assert by_seq[1] == by_seq[2] and len(by_seq[1]) == 2
    assert [bytes(p) for p in payloads] == [b"\x00{}", b"\x00{}"]


def test_a_row_whose_key_exists_replaces_the_other_columns(state_engine: Engine) -> None:
    first = datetime(2026, 1, 1, tzinfo=UTC)
    later = first + timedelta(hours=1)
    rows = [{"segment": "s", "profile_id": p, "due_at": first} for p in ("p_1", "p_2")]
    with state_engine.begin() as conn:
        bulk_insert(conn, segment_timers, rows)
        bulk_insert(
            conn,
            segment_timers,
            [{"segment": "s", "profile_id": "p_1", "due_at": later}],
            replace_on=("segment", "profile_id"),
        )
    with state_engine.connect() as conn:
        found = conn.execute(
            select(segment_timers.c.profile_id, segment_timers.c.due_at).order_by("profile_id")
        ).all()
    assert [(p, as_utc(at)) for p, at in found] == [("p_1", later), ("p_2", first)]
