"""Turn log records into warehouse columns: the common fields typed, the rest raw JSON."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import pyarrow as pa

from remarket.schema.events import Alias, Group, Identify, Message, Page, Screen, Track

__all__ = ["EVENT_COLUMNS", "EVENT_SCHEMA", "event_table"]

_TS: Final = pa.timestamp("us", tz="UTC")

EVENT_SCHEMA: Final = pa.schema(
    [
        ("offset", pa.int64()),
        ("message_id", pa.string()),
        ("source_id", pa.string()),
        ("type", pa.string()),
        ("event", pa.string()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("anonymous_id", pa.string()),
        ("user_id", pa.string()),
        ("group_id", pa.string()),
        ("previous_id", pa.string()),
        ("timestamp", _TS),
        ("original_timestamp", _TS),
        ("sent_at", _TS),
        ("received_at", _TS),
        ("properties", pa.string()),
        ("traits", pa.string()),
        ("context", pa.string()),
    ]
)
EVENT_COLUMNS: Final[tuple[str, ...]] = tuple(EVENT_SCHEMA.names)


def _text(raw: object) -> str:
    return bytes(raw).decode()  # type: ignore[call-overload, no-any-return]


def event_table(rows: Sequence[tuple[int, Message]]) -> pa.Table:
    """A columnar batch of ``(offset, message)`` pairs, in :data:`EVENT_SCHEMA`."""
    cols: dict[str, list[object]] = {name: [] for name in EVENT_COLUMNS}
    offset, message_id, source_id = cols["offset"], cols["message_id"], cols["source_id"]
    type_, event, name, category = cols["type"], cols["event"], cols["name"], cols["category"]
    anonymous_id, user_id = cols["anonymous_id"], cols["user_id"]
    group_id, previous_id = cols["group_id"], cols["previous_id"]
    timestamp, original, sent, received = (
        cols["timestamp"],
        cols["original_timestamp"],
        cols["sent_at"],
        cols["received_at"],
    )
    properties, traits, context = cols["properties"], cols["traits"], cols["context"]
    for off, m in rows:
        offset.append(off)
        message_id.append(m.message_id)
        source_id.append(m.source_id)
        anonymous_id.append(None if m.anonymous_id is None else str(m.anonymous_id))
        user_id.append(None if m.user_id is None else str(m.user_id))
        timestamp.append(m.timestamp)
        original.append(m.original_timestamp)
        sent.append(m.sent_at)
        received.append(m.received_at)
        context.append(_text(m.context))
        ev = nm = cat = grp = prev = props = trs = None
        if isinstance(m, Track):
            type_.append("track")
            ev, props = m.event, _text(m.properties)
        elif isinstance(m, Identify):
            type_.append("identify")
            trs = _text(m.traits)
        elif isinstance(m, Page | Screen):
            type_.append("page" if isinstance(m, Page) else "screen")
            nm, cat, props = m.name, m.category, _text(m.properties)
        elif isinstance(m, Group):
            type_.append("group")
            grp, trs = str(m.group_id), _text(m.traits)
        elif isinstance(m, Alias):
            type_.append("alias")
            prev = str(m.previous_id)
        event.append(ev)
        name.append(nm)
        category.append(cat)
        group_id.append(grp)
        previous_id.append(prev)
        properties.append(props)
        traits.append(trs)
    return pa.Table.from_pydict(cols, schema=EVENT_SCHEMA)
