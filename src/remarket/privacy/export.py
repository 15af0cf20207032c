"""Export (GDPR art. 15 and 20): everything held about a person, as one JSON document.

Each store contributes a section through an :class:`Exporter` in an
:class:`ExportRegistry` (modules register theirs, as for erasure). The foundation's
sections: ``profile`` (traits, identities, counts), ``consents`` (current and every
change), ``events`` (from the warehouse, oldest first), ``segments`` (memberships and
their history), ``journeys`` (walks and steps), ``decisions`` (experiment arms, holdouts)
and ``messages`` (every message queued, sent or skipped with its reason; suppressions).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, Final, Protocol

from sqlalchemy import ColumnElement, Engine, Table, select

from remarket.clock import Clock, SystemClock
from remarket.privacy.erasure import PII_VALUE, Identifier, Subject
from remarket.schema.events import as_utc
from remarket.storage.state.tables import (
    channel_outbox,
    channel_suppressions,
    consent_history,
    consents,
    journey_assignments,
    journey_instances,
    journey_steps,
    profile_traits,
    profiles,
    segment_history,
    segment_members,
)
from remarket.storage.warehouse import Warehouse

__all__ = ["ExportRegistry", "Exporter", "export_document", "standard_exporters"]

_PAGE: Final = 1000
_JSON_COLUMNS: Final = ("properties", "traits", "context")


class Exporter(Protocol):
    """One store's section of the export: JSON-ready data (``None`` or empty: nothing)."""

    name: str

    def export(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> Any: ...


class ExportRegistry:
    """The exporters of every store, in registration order (their sections' order)."""

    def __init__(self, exporters: Iterable[Exporter] = ()) -> None:
        self._exporters: list[Exporter] = []
        for exporter in exporters:
            self.register(exporter)

    def register(self, exporter: Exporter) -> None:
        if any(e.name == exporter.name for e in self._exporters):
            raise ValueError(f"an exporter named {exporter.name!r} is registered already")
        self._exporters.append(exporter)

    def __iter__(self) -> Iterator[Exporter]:
        return iter(list(self._exporters))


def _json(value: Any) -> Any:
    """Datetimes as ISO text (UTC); the rest as is."""
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    return value


def _rows(rows: Iterable[Any], *skip: str) -> list[dict[str, Any]]:
    return [
        {k: _json(v) for k, v in row._mapping.items() if k not in skip and k != "id"}
        for row in rows
    ]


class _Profile:
    name = "profile"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def export(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> Any:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(profiles).where(profiles.c.profile_id.in_(sorted(profile_ids)))
            ).all()
            traits = conn.execute(
                select(profile_traits)
                .where(profile_traits.c.profile_id.in_(sorted(profile_ids)))
                .order_by(profile_traits.c.key)
            ).all()
        live = [r for r in rows if r.merged_into is None]
        if not rows:
            return None
        return {
            "profile_ids": sorted(r.profile_id for r in rows),
            "event_count": sum(int(r.event_count) for r in live),
            "first_seen": _json(min((r.first_seen for r in live if r.first_seen), default=None)),
            "last_seen": _json(max((r.last_seen for r in live if r.last_seen), default=None)),
            "traits": {t.key: t.value for t in traits},
            "trait_sources": {
                t.key: {"at": _json(t.ts), "message_id": t.message_id} for t in traits
            },
            "identities": [
                {"kind": k, "value": v} for k, v in sorted(identities) if k != PII_VALUE
            ],
        }


class _ByProfile:
    """A section of rows that name the profile, from one or more tables in a set order."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        parts: Mapping[str, tuple[Table, Sequence[ColumnElement[Any]]]],
    ) -> None:
        self.name = name
        self._engine = engine
        self._parts = parts

    def export(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> Any:
        ids = sorted(profile_ids)
        with self._engine.connect() as conn:
            return {
                key: _rows(
                    conn.execute(
                        select(table).where(table.c.profile_id.in_(ids)).order_by(*order)
                    ).all()
                )
                for key, (table, order) in self._parts.items()
            }


class _Events:
    name = "events"

    def __init__(self, warehouse: Warehouse) -> None:
        self._warehouse = warehouse

    def export(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> Any:
        anonymous = sorted(v for k, v in identities if k == "anonymous_id")
        users = sorted(v for k, v in identities if k == "user_id")
        if not anonymous and not users:
            return []
        events: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            page = self._warehouse.profile_events(anonymous, users, limit=_PAGE, cursor=cursor)
            for row in page.events:
                events.append(
                    {
                        k: json.loads(v) if k in _JSON_COLUMNS and isinstance(v, str) else _json(v)
                        for k, v in row.items()
                    }
                )
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        events.reverse()  # oldest first: the order they happened in
        return events


def standard_exporters(engine: Engine, warehouse: Warehouse) -> ExportRegistry:
    """Exporters for the foundation's, segments' and privacy's stores."""
    consent = {
        "current": (consents, [consents.c.purpose]),
        "history": (consent_history, [consent_history.c.at, consent_history.c.id]),
    }
    segments = {
        "memberships": (segment_members, [segment_members.c.segment]),
        "history": (segment_history, [segment_history.c.at, segment_history.c.id]),
    }
    journeys = {
        "walks": (journey_instances, [journey_instances.c.entered_at, journey_instances.c.id]),
        "steps": (journey_steps, [journey_steps.c.at, journey_steps.c.id]),
    }
    # What was decided about the person: experiment arms and holdouts.
    decisions = {
        "assignments": (
            journey_assignments,
            [journey_assignments.c.assigned_at, journey_assignments.c.journey_id],
        )
    }
    # Every message queued for them, sent or skipped (with the reason), and suppressions.
    messages = {
        "outbox": (channel_outbox, [channel_outbox.c.created_at, channel_outbox.c.id]),
        "suppressions": (channel_suppressions, [channel_suppressions.c.channel]),
    }
    return ExportRegistry(
        [
            _Profile(engine),
            _ByProfile(engine, "consents", consent),
            _Events(warehouse),
            _ByProfile(engine, "segments", segments),
            _ByProfile(engine, "journeys", journeys),
            _ByProfile(engine, "decisions", decisions),
            _ByProfile(engine, "messages", messages),
        ]
    )


def export_document(
    subject: Subject, registry: ExportRegistry, *, clock: Clock | None = None
) -> dict[str, Any]:
    """The export of ``subject``: ``profile_id``, ``exported_at`` and one key per section."""
    now = (clock or SystemClock()).now()
    document: dict[str, Any] = {
        "profile_id": min(subject.profile_ids, default=None),
        "exported_at": _json(now),
    }
    for exporter in registry:
        document[exporter.name] = exporter.export(subject.profile_ids, subject.identities)
    return document
