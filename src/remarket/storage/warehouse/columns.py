"""The warehouse's ``events`` columns, in table order, shared by every warehouse."""

from __future__ import annotations

from typing import Final

__all__ = ["EVENT_COLUMNS"]

EVENT_COLUMNS: Final[tuple[str, ...]] = (
    "offset",
    "message_id",
    "source_id",
    "type",
    "event",
    "name",
    "category",
    "anonymous_id",
    "user_id",
    "group_id",
    "previous_id",
    "timestamp",
    "original_timestamp",
    "sent_at",
    "received_at",
    "properties",
    "traits",
    "context",
)
"""Common Segment fields typed, the rest (``properties``, ``traits``, ``context``) JSON."""
