"""The stages of the ingest pipeline: each takes a batch in flight and narrows or enriches it.

Order: validate → enrich → (guard, consent filter, pseudonymise: extra stages) → dedupe →
the collector appends what is left. A stage never drops an event silently: it moves it
to ``batch.rejected`` with a reason, counts it as a duplicate, or counts it as dropped.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol
from zlib import crc32

import msgspec

from remarket.collect.dedupe import Deduper, dedupe_keys
from remarket.collect.quarantine import Rejection
from remarket.collect.sources import Source
from remarket.entropy import random_uuid
from remarket.schema.events import (
    EMPTY_OBJECT,
    Alias,
    Group,
    Identify,
    Message,
    Page,
    Screen,
    Track,
    as_utc,
    raw_object,
)

__all__ = [
    "MAX_ID_LENGTH",
    "Dedupe",
    "Enrich",
    "Event",
    "InFlight",
    "Stage",
    "Validate",
    "error_field",
    "partition_of",
]

MAX_ID_LENGTH: Final = 512

_DECODERS: Final[dict[str | None, msgspec.json.Decoder[Message]]] = {
    None: msgspec.json.Decoder(Message),
    "track": msgspec.json.Decoder(Track),
    "identify": msgspec.json.Decoder(Identify),
    "page": msgspec.json.Decoder(Page),
    "screen": msgspec.json.Decoder(Screen),
    "group": msgspec.json.Decoder(Group),
    "alias": msgspec.json.Decoder(Alias),
}
_AT_PATH: Final = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
_MISSING: Final = re.compile(r"missing required field `(?P<name>[^`]+)`")
# JSON may escape a NUL, which PostgreSQL cannot store in text or JSONB. (Unpaired
# UTF-16 surrogates never get this far: the JSON parser refuses them.)
_NUL_ESCAPE: Final = b"\\u0000"


def error_field(exc: msgspec.MsgspecError) -> tuple[str | None, str]:
    """Split a msgspec error into the field path it names and the rule broken.

    >>> error_field(msgspec.ValidationError("Expected `str`, got `int` - at `$.event`"))
    ('event', 'Expected `str`, got `int`')
    >>> error_field(msgspec.ValidationError("Object missing required field `event`"))
    ('event', 'Object missing required field `event`')
    """
    message = str(exc)
    match = _AT_PATH.search(message)
    path, rule = (
        (None, message) if match is None else (match.group("path"), message[: match.start()])
    )
    missing = _MISSING.search(rule)
    if missing is not None:
        path = f"{path}.{missing['name']}" if path else missing["name"]
    return path or None, rule


class Event(msgspec.Struct, gc=False):
    """One valid event of the request: its position, raw bytes, message and dedupe key.

    A struct without garbage-collector tracking, like the messages: one is built per
    event, and it refers to nothing that could refer back to it.
    """

    index: int
    raw: bytes
    message: Message
    key: bytes = b""


@dataclass(slots=True)
class InFlight:
    """A request's events on their way through the stages.

    ``raw`` holds the request's events as sent; validation fills ``events`` with the
    valid ones, and later stages narrow that list.
    """

    source: Source
    received_at: datetime
    raw: list[bytes]
    endpoint_type: str | None = None
    sent_at: datetime | None = None
    events: list[Event] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    duplicates: int = 0
    claimed: list[bytes] = field(default_factory=list)
    waiting: list[tuple[Event, asyncio.Future[bool]]] = field(default_factory=list)
    owner: asyncio.Future[bool] | None = None
    # The request's client (for the guard), whether the events are an operator's own
    # (a quarantine replay, /v1/import: no velocity check), and how many events a stage
    # dropped on purpose (consent).
    ip: str | None = None
    user_agent: str | None = None
    trusted: bool = False
    dropped: int = 0

    def reject(self, index: int, reason: str, field_: str | None, detail: str) -> None:
        self.rejected.append(Rejection(index, reason, field_, detail, self.raw[index]))


class Stage(Protocol):
    """A step of the pipeline; it narrows or edits ``batch.events`` in place."""

    def __call__(self, batch: InFlight) -> None: ...


class Validate:
    """Decode each event into its typed message and check the Segment spec's rules."""

    def __init__(self, max_event_bytes: int) -> None:
        self._max = max_event_bytes

    def __call__(self, batch: InFlight) -> None:
        decode = _DECODERS[batch.endpoint_type].decode
        limit = self._max
        valid = batch.events
        for index, raw in enumerate(batch.raw):
            if len(raw) > limit:
                batch.reject(
                    index,
                    "event_too_large",
                    None,
                    f"event is {len(raw)} bytes; max_event_bytes is {limit}",
                )
                continue
            if b"\\" in raw and _NUL_ESCAPE in raw:  # a byte search first: escapes are rare
                batch.reject(
                    index, "invalid_event", None, "text holds \\u0000, which cannot be stored"
                )
                continue
            try:
                message = decode(raw)
            except msgspec.MsgspecError as exc:
                path, rule = error_field(exc)
                batch.reject(index, "invalid_event", path, rule)
                continue
            problem = _check(message)
            if problem is not None:
                batch.reject(index, "invalid_event", problem[0], problem[1])
                continue
            valid.append(Event(index, raw, message))


def _id_text(value: str | int) -> str | None:
    """The id as text, or None if it breaks the length rule."""
    text = value if type(value) is str else str(value)
    return text if 0 < len(text) <= MAX_ID_LENGTH else None


_ID_RULE: Final = f"must be 1 to {MAX_ID_LENGTH} characters"
_OBJECT_RULE: Final = "must be a JSON object"


def _check(message: Message) -> tuple[str, str] | None:
    """The rules that types alone do not state; returns (field, rule) when one is broken.

    Written out field by field: it runs for every event on the ingest hot path.
    """
    if message.anonymous_id is not None:
        anonymous_id = _id_text(message.anonymous_id)
        if anonymous_id is None:
            return "anonymousId", _ID_RULE
        message.anonymous_id = anonymous_id
    if message.user_id is not None:
        user_id = _id_text(message.user_id)
        if user_id is None:
            return "userId", _ID_RULE
        message.user_id = user_id
    elif message.anonymous_id is None and not isinstance(message, Alias):
        return "userId", "either userId or anonymousId is required"
    if isinstance(message, Track):
        if not message.event.strip():
            return "event", "must be a non-empty event name"
        return _objects(message, "properties", message.properties)
    if isinstance(message, Page | Screen):
        return _objects(message, "properties", message.properties)
    if isinstance(message, Alias):
        if message.user_id is None:
            return "userId", "alias needs userId"
        previous_id = _id_text(message.previous_id)
        if previous_id is None:
            return "previousId", _ID_RULE
        message.previous_id = previous_id
        return _objects(message)
    if isinstance(message, Group):
        message.group_id = str(message.group_id)
    return _objects(message, "traits", message.traits)  # identify, group


def _objects(
    message: Message, name: str = "", raw: msgspec.Raw = EMPTY_OBJECT
) -> tuple[str, str] | None:
    """Context, integrations, then the type's own object field must be JSON objects."""
    if not raw_object(message.context):
        return "context", _OBJECT_RULE
    if not raw_object(message.integrations):
        return "integrations", _OBJECT_RULE
    return None if raw_object(raw) else (name, _OBJECT_RULE)


class Dedupe:
    """Drop events whose messageId this source sent before (Segment's replay rule).

    A replay of an event still being appended by another request is set aside in
    ``batch.waiting`` with that request's future: the collector decides once it is known
    whether the original became durable.
    """

    def __init__(self, deduper: Deduper) -> None:
        self._deduper = deduper

    def __call__(self, batch: InFlight) -> None:
        events = batch.events
        with_id = [e for e in events if e.message.message_id]
        ids = [e.message.message_id or "" for e in with_id]
        for event, key in zip(with_id, dedupe_keys(batch.source.id, ids), strict=True):
            event.key = key
        if batch.owner is None:
            batch.owner = asyncio.get_running_loop().create_future()
        verdicts = iter(self._deduper.claim([e.key for e in with_id], batch.owner))
        claimed, waiting = batch.claimed, batch.waiting
        kept: list[Event] = []
        for event in events:
            if not event.key:
                kept.append(event)
                continue
            verdict = next(verdicts)
            if verdict is True:
                claimed.append(event.key)
                kept.append(event)
            elif verdict is False:
                batch.duplicates += 1
            else:
                waiting.append((event, verdict))
        batch.events = kept


class Enrich:
    """Stamp what the server knows: receivedAt, source, messageId, corrected timestamp."""

    def __init__(self, new_id: Callable[[], str] = random_uuid) -> None:
        self._new_id = new_id

    def __call__(self, batch: InFlight) -> None:
        received, source_id, batch_sent = batch.received_at, batch.source.id, batch.sent_at
        kept: list[Event] = []
        for event in batch.events:
            m = event.message
            m.received_at = received
            m.source_id = source_id
            if not m.message_id:
                m.message_id = self._new_id()
            original = m.timestamp or m.original_timestamp
            sent = m.sent_at or batch_sent
            if sent is not None:
                sent = m.sent_at = as_utc(sent)
            if original is None:
                m.timestamp = received
            else:
                original = m.original_timestamp = as_utc(original)
                # Segment's clock-skew rule: the device clock may be wrong, but the
                # interval between the event and its sending is right.
                try:
                    m.timestamp = received - (sent - original) if sent else original
                except OverflowError:
                    batch.reject(
                        event.index,
                        "invalid_event",
                        "sentAt",
                        "sentAt and timestamp are too far apart to correct the clock skew",
                    )
                    continue
            if isinstance(m, Identify) and bytes(m.traits).strip() == b"{}":
                m.traits = _context_traits(m.context)
            kept.append(event)
        batch.events = kept


_CONTEXT: Final = msgspec.json.Decoder(dict[str, Any])


def _context_traits(context: msgspec.Raw) -> msgspec.Raw:
    """RudderStack's SDKs send identify traits in ``context.traits`` only."""
    if b'"traits"' not in bytes(context):
        return EMPTY_OBJECT
    traits = _CONTEXT.decode(context).get("traits")
    return msgspec.Raw(msgspec.json.encode(traits)) if isinstance(traits, dict) else EMPTY_OBJECT


def partition_of(message: Message, partitions: int) -> int:
    """The log partition of an event: by device (anonymousId), else by userId."""
    key = message.anonymous_id if message.anonymous_id is not None else message.user_id
    return crc32((key if type(key) is str else str(key)).encode()) % partitions
