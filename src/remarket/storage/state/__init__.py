"""State store: operational tables on SQLite or PostgreSQL (SQLAlchemy 2 + Alembic)."""

from __future__ import annotations

from remarket.storage.state.engine import connect_state, upgrade_state
from remarket.storage.state.tables import (
    api_keys,
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
    "connect_state",
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
