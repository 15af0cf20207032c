"""The state store's Alembic migrations build exactly the tables that tables.py declares."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Integer,
    LargeBinary,
    String,
    Table,
    inspect,
    select,
    text,
)

from remarket.schema.events import as_utc
from remarket.storage import state
from remarket.storage.state import connect_state, metadata, upgrade_state

WHEN = datetime(2024, 5, 1, 12, 30, 15, 250000, tzinfo=UTC)
MIGRATIONS = str(Path(state.__file__).with_name("migrations"))


@pytest.fixture
def engine(state_url: str) -> Iterator[Engine]:
    """A state store on each backend, not yet migrated."""
    engine = connect_state(state_url)
    yield engine
    engine.dispose()


def _schema(engine: Engine) -> dict[str, Any]:
    """What the database holds, as comparable data: tables, columns, keys, indexes."""
    insp = inspect(engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in insp.get_columns(table)],
            insp.get_pk_constraint(table),
            sorted(
                (u["name"] or "", u["column_names"]) for u in insp.get_unique_constraints(table)
            ),
            sorted((i["name"] or "", i["column_names"]) for i in insp.get_indexes(table)),
        )
        for table in sorted(insp.get_table_names())
    }


def _revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_creates_every_table(engine: Engine) -> None:
    upgrade_state(engine)
    created = set(inspect(engine).get_table_names())
    assert created == {*metadata.tables, "alembic_version"}
    assert _revision(engine) == ScriptDirectory(MIGRATIONS).get_current_head()


def test_upgrade_twice_is_a_no_op(engine: Engine) -> None:
    upgrade_state(engine)
    before = _schema(engine)
    with engine.begin() as conn:
        conn.execute(metadata.tables["consumer_offsets"].insert(), {"consumer": "c", "offset": 5})
    upgrade_state(engine)
    assert _schema(engine) == before
    with engine.connect() as conn:
        assert conn.execute(select(metadata.tables["consumer_offsets"])).all() == [("c", 5)]


def test_migrations_match_the_table_definitions(engine: Engine) -> None:
    # A change to tables.py without a migration shows up here as a difference.
    upgrade_state(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, "compare_server_default": True}
        )
        assert compare_metadata(context, metadata) == []


def _sample(table: Table) -> dict[str, Any]:
    """A row with a value of the declared type in every column, the longest strings allowed."""
    row: dict[str, Any] = {}
    for column in table.columns:
        kind = column.type
        if isinstance(kind, DateTime):
            value: Any = WHEN
        elif isinstance(kind, Boolean):
            value = True
        elif isinstance(kind, Integer):
            value = 2**40 + 7 if isinstance(kind, BigInteger) else 7
        elif isinstance(kind, JSON):
            value = {"plan": "pro", "tags": ["a", "é"], "n": 1.5, "none": None}
        elif isinstance(kind, LargeBinary):
            value = b"\x00\xff payload"
        elif isinstance(kind, String):
            text = f"{table.name}.{column.name} ✓"
            value = (text * 100)[: kind.length] if kind.length else text * 100
        else:
            raise TypeError(f"no sample value for {table.name}.{column.name} of type {kind!r}")
        row[column.name] = value
    return row


@pytest.mark.parametrize("table", sorted(metadata.tables))
def test_round_trip_through_every_table(engine: Engine, table: str) -> None:
    upgrade_state(engine)
    t = metadata.tables[table]
    row = _sample(t)
    with engine.begin() as conn:
        conn.execute(t.insert(), row)
    with engine.connect() as conn:
        (back,) = conn.execute(select(t)).mappings().all()
    got = dict(back)
    # SQLite keeps no zone with a timestamp: it returns the UTC wall time, naive.
    for name, value in got.items():
        if isinstance(value, datetime):
            got[name] = as_utc(value)
    assert got == row


def test_key_rows_keep_their_keys_through_0009_and_back(engine: Engine) -> None:
    """0009 moves pii_keys into key order and fills its handle index; nothing is lost
    either way (a lost key would make its events unreadable)."""
    rows = [
        {"handle": f"h_{n:032x}", "key_id": f"k{n:015x}", "secret": bytes([n]) * 32}
        for n in range(3)
    ]
    upgrade_state(engine, "0008")
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO pii_keys (handle, key_id, secret, created_at)"
                " VALUES (:handle, :key_id, :secret, :created_at)"
            ),
            [{**row, "created_at": WHEN} for row in rows],
        )
    upgrade_state(engine)
    keys, handles = metadata.tables["pii_keys"], metadata.tables["pii_key_handles"]
    with engine.connect() as conn:
        moved = conn.execute(
            select(keys.c.handle, keys.c.key_id, keys.c.secret, keys.c.indexed)
        ).all()
        indexed = conn.execute(select(handles.c.handle, handles.c.key_id)).all()
    assert sorted(moved) == [(r["handle"], r["key_id"], r["secret"], True) for r in rows]
    assert sorted(indexed) == [(r["handle"], r["key_id"]) for r in rows]
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
    with engine.connect() as conn:
        back = conn.execute(text("SELECT handle, key_id, secret FROM pii_keys")).all()
        tables = set(inspect(conn).get_table_names())
    assert sorted((h, k, bytes(s)) for h, k, s in back) == [
        (r["handle"], r["key_id"], r["secret"]) for r in rows
    ]
    assert "pii_key_handles" not in tables
