"""Shared fixtures: real PostgreSQL and NATS JetStream servers, skipped only when absent."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import psycopg
import pytest

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
