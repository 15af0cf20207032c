"""State store: operational tables on SQLite or PostgreSQL (SQLAlchemy 2 + Alembic)."""

from __future__ import annotations

from remarket.storage.state.engine import connect_state, upgrade_state
from remarket.storage.state.offsets import claim_offset, committed_offset
from remarket.storage.state.tables import (
    api_keys,
    audit_head,
    audit_log,
    consent_history,
    consents,
    consumer_offsets,
    identities,
    metadata,
    profile_traits,
    profiles,
    quarantine,
    segment_errors,
    segment_history,
    segment_members,
    segment_outbox,
    segment_states,
    segment_timers,
    segment_versions,
    segments,
    sources,
)

__all__ = [
    "api_keys",
    "audit_head",
    "audit_log",
    "claim_offset",
    "committed_offset",
    "connect_state",
    "consent_history",
    "consents",
    "consumer_offsets",
    "identities",
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
    "upgrade_state",
]
