"""Operational tables of the state store (SQLite or PostgreSQL), as SQLAlchemy Core.

Changes to these tables go through an Alembic migration in ``migrations/versions``.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = [
    "api_keys",
    "consumer_offsets",
    "identities",
    "metadata",
    "profile_traits",
    "profiles",
    "quarantine",
    "sources",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

_TS = DateTime(timezone=True)

sources = Table(
    "sources",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    # Only a SHA-256 of the write key is kept; the key itself is shown once at creation.
    Column("write_key_hash", String(64), nullable=False, unique=True),
    Column("write_key_prefix", String(16), nullable=False),
    Column("enabled", Boolean, nullable=False, default=True),
    Column("created_at", _TS, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("role", String(32), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", _TS, nullable=False),
    Column("revoked_at", _TS, nullable=True),
)

profiles = Table(
    "profiles",
    metadata,
    Column("profile_id", String(40), primary_key=True),
    # A merged profile keeps a row pointing at the survivor, so old ids still resolve.
    Column("merged_into", String(40), nullable=True, index=True),
    Column("first_seen", _TS, nullable=True),
    Column("last_seen", _TS, nullable=True),
    Column("event_count", BigInteger, nullable=False, default=0),
)

identities = Table(
    "identities",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("value", String(512), primary_key=True),
    Column("profile_id", String(40), nullable=False, index=True),
)

profile_traits = Table(
    "profile_traits",
    metadata,
    Column("profile_id", String(40), primary_key=True),
    Column("key", String(256), primary_key=True),
    Column("value", JSON, nullable=True),
    # Last write wins by event timestamp, then by messageId, so any order gives one answer.
    Column("ts", _TS, nullable=False),
    Column("message_id", String(128), nullable=False),
)

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("source_id", String(32), nullable=False, index=True),
    Column("received_at", _TS, nullable=False),
    Column("reason", String(64), nullable=False),
    Column("field", String(256), nullable=True),
    Column("detail", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("replayed_at", _TS, nullable=True),
    Index("ix_quarantine_pending", "replayed_at", "id"),
)

consumer_offsets = Table(
    "consumer_offsets",
    metadata,
    Column("consumer", String(64), primary_key=True),
    Column("offset", BigInteger, nullable=False),
)
