"""Response bodies of the read and admin API (Pydantic, for validation and OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

__all__ = [
    "EventOut",
    "EventPageOut",
    "IdentityOut",
    "Ingested",
    "ProfileOut",
    "QuarantineEntryOut",
    "QuarantinePageOut",
    "ReplayIn",
    "ReplayOut",
    "SourceCreated",
    "SourceIn",
    "SourceOut",
]


class Ingested(BaseModel):
    success: bool
    accepted: int = Field(description="Events now durably in the log.")
    duplicates: int = Field(description="Replays of a messageId already received.")
    quarantined: int = Field(description="Invalid events kept in the quarantine.")
    dropped: int = Field(
        0,
        description="Events left out on purpose (a person without analytics consent); "
        "present only when not 0.",
    )
    errors: list[dict[str, Any]] = Field(description="index, reason, field, detail per event.")


class IdentityOut(BaseModel):
    kind: str
    value: str


class ProfileOut(BaseModel):
    profile_id: str
    traits: dict[str, Any]
    identities: list[IdentityOut]
    event_count: int
    first_seen: datetime | None
    last_seen: datetime | None


class EventOut(BaseModel):
    offset: int
    message_id: str | None
    source_id: str | None
    type: str
    event: str | None
    name: str | None
    category: str | None
    anonymous_id: str | None
    user_id: str | None
    group_id: str | None
    previous_id: str | None
    timestamp: datetime
    original_timestamp: datetime | None
    sent_at: datetime | None
    received_at: datetime
    properties: dict[str, Any] | None
    traits: dict[str, Any] | None
    context: dict[str, Any] | None


class EventPageOut(BaseModel):
    events: list[EventOut]
    next_cursor: str | None = Field(description="Pass as ?cursor= for the next (older) page.")


class SourceIn(BaseModel):
    # Stored stripped: blank is no name (a pattern search: any non-space character).
    name: str = Field(min_length=1, max_length=200, pattern=r"\S")


class SourceOut(BaseModel):
    id: str
    name: str
    write_key_prefix: str
    enabled: bool
    created_at: datetime


class SourceCreated(SourceOut):
    write_key: str = Field(description="Shown once; only its hash is stored.")


class QuarantineEntryOut(BaseModel):
    id: int
    source_id: str
    received_at: datetime
    reason: str
    field: str | None
    detail: str
    payload: str = Field(description="The event as received (UTF-8, invalid bytes replaced).")
    replayed_at: datetime | None


class QuarantinePageOut(BaseModel):
    entries: list[QuarantineEntryOut]
    next_after_id: int | None


class ReplayIn(BaseModel):
    ids: list[int] | None = Field(None, description="Entries to replay; omit for all pending.")


class ReplayOut(BaseModel):
    replayed: list[int]
    still_invalid: list[dict[str, Any]]
