"""Connecting to the state store and bringing its schema up to date."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

__all__ = ["SQLITE_SYNCHRONOUS", "connect_state", "upgrade_state"]

_MIGRATIONS = str(Path(__file__).with_name("migrations"))
SQLITE_SYNCHRONOUS = "NORMAL"
"""SQLite's ``synchronous`` for the state store's connections: in WAL mode a process crash
loses no commit, a power loss may lose the last ones (writers that need more raise it for
their own commits, as the keyring does)."""


def _sqlite_pragmas(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
    cursor.execute("PRAGMA busy_timeout=10000")
    # Deleted rows are overwritten with zeros, not left in free space: erasure destroys
    # keys and personal rows, and a copy of the file must not bring them back.
    cursor.execute("PRAGMA secure_delete=ON")
    cursor.close()


def connect_state(url: str) -> Engine:
    """An engine for the state store; creates the SQLite file's folder if needed."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(
            f"state store URL must be sqlite:/// or postgresql+psycopg://, got {parsed.drivername}"
        )
    return create_engine(url, pool_pre_ping=True)


def upgrade_state(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to ``revision`` (idempotent)."""
    config = Config()
    config.set_main_option("script_location", _MIGRATIONS)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
