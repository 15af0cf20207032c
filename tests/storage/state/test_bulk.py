"""Rows written through the driver read back through SQLAlchemy exactly as its own
inserts would, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import Engine, select

from remarket.schema.events import as_utc
from remarket.storage.state import segment_history, segment_outbox, segment_timers
from remarket.storage.state.bulk import insert_rows


def test_rows_read_back_as_sqlalchemy_writes_them(state_engine: Engine) -> None:
    at = datetime(2026, 3, 29, 1, 30, 0, 123456, tzinfo=UTC)
    elsewhere = datetime(2026, 3, 29, 4, 0, 0, 1, tzinfo=timezone(timedelta(hours=2)))
    columns = ("segment", "version", "profile_id", "kind", "at", "seq")
    with state_engine.begin() as conn:
        insert_rows(
            conn,
            segment_history,
            columns,
            [("s'quote", 1, "p_1", "entered", at, 1), ("s2", 2, "p_2", "exited", elsewhere, 7)],
        )
        conn.execute(
            segment_history.insert(),
            [dict(zip(columns, ("s3", 3, "p_3", "entered", at, 1), strict=True))],
        )
        insert_rows(
            conn,
            segment_outbox,
            ("message_id", "profile_id", "payload", "created_at"),
            [("m1", "p_1", b"\x00{}", at)],
        )
        insert_rows(conn, segment_outbox, ("message_id",), [])  # nothing to write: no SQL
    with state_engine.connect() as conn:
        rows = conn.execute(
            select(segment_history.c.segment, segment_history.c.at, segment_history.c.seq).order_by(
                segment_history.c.segment
            )
        ).all()
        outbox = conn.execute(select(segment_outbox.c.payload, segment_outbox.c.created_at)).one()
        later = conn.scalar(select(segment_history.c.segment).where(segment_history.c.at > at))
    assert [(s, as_utc(t), n) for s, t, n in rows] == [
        ("s'quote", at, 1),
        ("s2", elsewhere.astimezone(UTC), 7),
        ("s3", at, 1),
    ]
    assert (bytes(outbox[0]), as_utc(outbox[1])) == (b"\x00{}", at)
    assert later == "s2"  # comparisons in SQL see the same instants as SQLAlchemy's rows


def test_a_row_whose_key_exists_replaces_the_other_columns(state_engine: Engine) -> None:
    first = datetime(2026, 1, 1, tzinfo=UTC)
    later = first + timedelta(hours=1)
    columns = ("segment", "profile_id", "due_at")
    with state_engine.begin() as conn:
        insert_rows(conn, segment_timers, columns, [("s", "p_1", first), ("s", "p_2", first)])
        insert_rows(
            conn,
            segment_timers,
            columns,
            [("s", "p_1", later)],
            replace_on=("segment", "profile_id"),
        )
    with state_engine.connect() as conn:
        rows = conn.execute(
            select(segment_timers.c.profile_id, segment_timers.c.due_at).order_by("profile_id")
        ).all()
    assert [(p, as_utc(at)) for p, at in rows] == [("p_1", later), ("p_2", first)]
