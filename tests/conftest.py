"""Shared fixtures: real PostgreSQL and NATS JetStream servers, skipped only when absent."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine

from remarket.storage.state import connect_state, upgrade_state

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
NATS_URL = "nats://127.0.0.1:4222"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (plain libpq URL), dropped after the test."""
    if not _port_open(5432):
        pytest.skip("PostgreSQL is not running on 127.0.0.1:5432")
    name = f"rm_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def nats_url() -> str:
    """The URL of the machine's NATS JetStream server."""
    if not _port_open(4222):
        pytest.skip("NATS JetStream is not running on 127.0.0.1:4222")
    return NATS_URL


@pytest.fixture
def unique_name() -> str:
    """A name no other test uses (for JetStream streams, sources, ...)."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A state-store URL, once on SQLite and once on PostgreSQL (an empty database)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    plain: str = request.getfixturevalue("pg_database")
    return plain.replace("postgresql://", "postgresql+psycopg://", 1)


@pytest.fixture
def state_engine(state_url: str) -> Iterator[Engine]:
    """A migrated state store on each backend."""
    engine = connect_state(state_url)
    upgrade_state(engine)
    yield engine
    engine.dispose()
