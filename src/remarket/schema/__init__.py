"""Event models (Segment spec) and, later, definition models."""

from __future__ import annotations

from remarket.schema.events import (
    EVENT_TYPES,
    Alias,
    Batch,
    Group,
    Identify,
    Message,
    Page,
    Screen,
    Track,
    as_utc,
    decode_log_message,
    encode_message,
    raw_object,
)

__all__ = [
    "EVENT_TYPES",
    "Alias",
    "Batch",
    "Group",
    "Identify",
    "Message",
    "Page",
    "Screen",
    "Track",
    "as_utc",
    "decode_log_message",
    "encode_message",
    "raw_object",
]
