"""Segment-spec event messages, as accepted at collect and as stored in the event log.

Decoding uses msgspec because the ingest hot path parses every event: it is several
times faster than Pydantic here, and the rest of the API keeps Pydantic models.
Free-form objects (``properties``, ``traits``, ``context``, ``integrations``) stay as
raw JSON bytes end to end: nothing decodes them unless it needs a value from them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "EMPTY_OBJECT",
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

EMPTY_OBJECT: Final = msgspec.Raw(b"{}")


def _empty_object() -> msgspec.Raw:
    # A factory rather than a default: JSON Schema generation cannot render a Raw default.
    return EMPTY_OBJECT


_OBJECT_FIELD: Final = msgspec.field(default_factory=_empty_object)

EventType = Literal["track", "identify", "page", "screen", "group", "alias"]
EVENT_TYPES: Final[tuple[str, ...]] = ("track", "identify", "page", "screen", "group", "alias")


class _Base(
    msgspec.Struct,
    kw_only=True,
    omit_defaults=True,
    rename="camel",
    tag_field="type",
    gc=False,
):
    """Fields common to every message. Ids may arrive as numbers; they are kept as strings.

    Not tracked by the garbage collector (``gc=False``): no field can hold a reference
    back, and ingest keeps thousands alive while a group commit waits, which otherwise
    get promoted and make full collections frequent.
    """

    message_id: str | None = None
    anonymous_id: str | int | None = None
    user_id: str | int | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None
    received_at: datetime | None = None
    channel: str | None = None
    context: msgspec.Raw = _OBJECT_FIELD
    integrations: msgspec.Raw = _OBJECT_FIELD
    source_id: str | None = None
    # Set by the server only (collect refuses it from clients): the PII and ids of the
    # event, encrypted under the person's key (see remarket.privacy.seal).
    sealed: bytes | None = None
    # Set by the collector's guard ("crawler", "headless"): the workers keep the event out
    # of the warehouse, profiles and segments. A value a client sends is overwritten.
    bot: str | None = None


class Track(_Base, tag="track"):
    event: str
    properties: msgspec.Raw = _OBJECT_FIELD


class Identify(_Base, tag="identify"):
    traits: msgspec.Raw = _OBJECT_FIELD


class Page(_Base, tag="page"):
    name: str | None = None
    category: str | None = None
    properties: msgspec.Raw = _OBJECT_FIELD


class Screen(_Base, tag="screen"):
    name: str | None = None
    category: str | None = None
    properties: msgspec.Raw = _OBJECT_FIELD


class Group(_Base, tag="group"):
    group_id: str | int
    traits: msgspec.Raw = _OBJECT_FIELD


class Alias(_Base, tag="alias"):
    previous_id: str | int


Message = Track | Identify | Page | Screen | Group | Alias


class Batch(msgspec.Struct, kw_only=True, rename="camel"):
    """The body of ``/v1/batch`` and ``/v1/import``: events stay raw so each is judged alone."""

    batch: list[msgspec.Raw]
    sent_at: datetime | None = None
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    write_key: str | None = None


_OPEN_BRACE: Final = ord("{")
_LOG_DECODER: Final[msgspec.json.Decoder[Message]] = msgspec.json.Decoder(Message)
_ENCODER: Final = msgspec.json.Encoder()


def decode_log_message(payload: bytes) -> Message:
    """Decode one canonical message as the log stores it."""
    return _LOG_DECODER.decode(payload)


def encode_message(message: Message) -> bytes:
    """The canonical JSON of a message (the form the log stores)."""
    return _ENCODER.encode(message)


def raw_object(raw: msgspec.Raw) -> bool:
    """Whether raw JSON is an object (properties, traits and context must be)."""
    if raw is EMPTY_OBJECT:
        return True
    view = memoryview(raw)
    if len(view) and view[0] == _OPEN_BRACE:
        return True
    return bytes(view).lstrip().startswith(b"{")


def as_utc(value: datetime) -> datetime:
    """Naive timestamps are taken as UTC, as Segment does.

    >>> as_utc(datetime(2026, 1, 1, 12)).isoformat()
    '2026-01-01T12:00:00+00:00'
    """
    zone = value.tzinfo
    if zone is UTC:  # what JSON "Z" decodes to: the common case on the ingest path
        return value
    if zone is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
