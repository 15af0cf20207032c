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
    UniqueConstraint,
)

__all__ = [
    "api_keys",
    "audit_head",
    "audit_log",
    "consent_history",
    "consents",
    "consumer_offsets",
    "identities",
    "login_failures",
    "metadata",
    "profile_traits",
    "profiles",
    "quarantine",
    "segment_errors",
    "segment_history",
    "segment_members",
    "segment_outbox",
    "segment_states",
    "segment_timers",
    "segment_versions",
    "segments",
    "sources",
    "user_sessions",
    "users",
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

# -- segments ------------------------------------------------------------------
# Erasure of a person deletes their rows (by profile_id, including the ids merged into
# theirs) from segment_states, segment_members, segment_history, segment_timers,
# segment_outbox and segment_errors; segments and segment_versions hold no personal data.

segments = Table(
    "segments",
    metadata,
    Column("name", String(200), primary_key=True),
    # The newest version; live_version is the one whose states and members are stored
    # (None before the first backfill). pending: a backfill is due (new version, or a
    # segment it uses changed); generation counts backfills.
    Column("version", Integer, nullable=False),
    Column("live_version", Integer, nullable=True),
    Column("pending", Boolean, nullable=False, default=True),
    Column("generation", Integer, nullable=False, default=0),
    Column("created_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
    Column("deleted_at", _TS, nullable=True),
)
"""A segment by name (unique); deleting it keeps the row, so versions keep counting."""

segment_versions = Table(
    "segment_versions",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("definition", JSON, nullable=False),
    # Names of the segments its in_segment nodes inline (transitively).
    Column("uses", JSON, nullable=False),
    Column("created_at", _TS, nullable=False),
)
"""Every version of every definition, as submitted (no personal data)."""

segment_states = Table(
    "segment_states",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("state", LargeBinary, nullable=False),
    # The latest time the state was evaluated at: evaluation time never goes back.
    Column("evaluated_at", _TS, nullable=False),
)
"""Real-time evaluator state per (segment, profile). Personal: erase by profile_id."""

segment_members = Table(
    "segment_members",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("version", Integer, nullable=False),
    Column("since", _TS, nullable=False),
)
"""Current members. Personal: erase by profile_id."""

segment_history = Table(
    "segment_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("segment", String(200), nullable=False),
    Column("version", Integer, nullable=False),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("kind", String(8), nullable=False),
    Column("at", _TS, nullable=False),
    # Transitions of one (segment, profile) are numbered 1, 2, ...: the messageId of the
    # published event derives from it, so a transition is published once.
    Column("seq", Integer, nullable=False),
    UniqueConstraint("segment", "profile_id", "seq"),
    Index("ix_segment_history_segment_at", "segment", "at"),
)
"""Every entered / exited transition. Personal: erase by profile_id."""

segment_timers = Table(
    "segment_timers",
    metadata,
    Column("segment", String(200), primary_key=True),
    Column("profile_id", String(40), primary_key=True, index=True),
    Column("due_at", _TS, nullable=False, index=True),
)
"""When to re-check a profile with no new event (a window edge). Erase by profile_id."""

segment_outbox = Table(
    "segment_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("payload", LargeBinary, nullable=False),
    Column("created_at", _TS, nullable=False),
)
"""Segment Entered / Exited events committed but not yet in the log. The payload holds
the profile's user or anonymous id: erase by profile_id."""

segment_errors = Table(
    "segment_errors",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("segment", String(200), nullable=False, index=True),
    Column("version", Integer, nullable=False),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("detail", Text, nullable=False),
    Column("at", _TS, nullable=False),
)
"""A segment that failed to evaluate for one profile (the others went on). Erase by
profile_id."""

# -- privacy -------------------------------------------------------------------
# Erasure of a person deletes their rows (by profile_id, including the ids merged into
# theirs) from consents and consent_history. The audit log holds ids and hashes only.

consents = Table(
    "consents",
    metadata,
    Column("profile_id", String(40), primary_key=True),
    Column("purpose", String(32), primary_key=True),
    Column("state", String(8), nullable=False),
    Column("source", String(32), nullable=False),
    Column("legal_basis", String(32), nullable=False),
    # The newest record by (at, ref) wins, so records applied in any order agree.
    Column("at", _TS, nullable=False),
    Column("ref", String(160), nullable=False),
)
"""The current consent state per (profile, purpose). Personal: erase by profile_id."""

consent_history = Table(
    "consent_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("profile_id", String(40), nullable=False, index=True),
    Column("purpose", String(32), nullable=False),
    Column("state", String(8), nullable=False),
    Column("source", String(32), nullable=False),
    Column("legal_basis", String(32), nullable=False),
    Column("at", _TS, nullable=False),
    # What set it: "<source>:<messageId>" for events, "api:<uuid>" for the API.
    Column("ref", String(160), nullable=False),
    Column("recorded_at", _TS, nullable=False),
)
"""Every consent change, append-only. Personal: erase by profile_id."""

audit_log = Table(
    "audit_log",
    metadata,
    # Numbered 1, 2, ... by the writer holding the head row: a gap is a removed entry.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("at", _TS, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(256), nullable=False),
    # Canonical JSON (sorted keys, no spaces): hashed exactly as stored.
    Column("details", Text, nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False, unique=True),
)
"""Append-only, hash-chained record of who changed what. Ids and hashes only, no PII."""

audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)
"""One row (id 1, written by the first append): the last entry of the audit chain.
Appends lock it, so two writers never fork the chain; verification checks that the
chain ends where it says."""

# --- access -------------------------------------------------------------------
# Console users are staff, not the people events are about: these tables hold no
# profile_id and a person's erasure never touches them. Deleting a user deletes their
# sessions; the audit log names users by id only.

users = Table(
    "users",
    metadata,
    Column("id", String(32), primary_key=True),
    # Lower-cased and stripped, so one address is one user however it is typed.
    Column("email", String(320), nullable=False, unique=True),
    Column("role", String(32), nullable=False, index=True),
    # argon2id, in the PHC string format (parameters and salt included).
    Column("password_hash", String(256), nullable=False),
    Column("created_at", _TS, nullable=False),
    Column("updated_at", _TS, nullable=False),
)
"""Console users: an e-mail address, a role and an argon2id password hash."""

user_sessions = Table(
    "user_sessions",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("user_id", String(32), nullable=False, index=True),
    # Only a SHA-256 of the session token is kept, like API keys.
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", _TS, nullable=False),
    Column("last_seen_at", _TS, nullable=False),
    Column("expires_at", _TS, nullable=False),
    Column("revoked_at", _TS, nullable=True),
)
"""Console sessions: valid until revoked, idle too long, or past ``expires_at``."""

login_failures = Table(
    "login_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # SHA-256 of the lower-cased e-mail tried, whether or not such a user exists.
    Column("subject", String(64), nullable=False, index=True),
    Column("at", _TS, nullable=False),
)
"""Recent failed (and in-flight) logins per address, for the lockout window."""
