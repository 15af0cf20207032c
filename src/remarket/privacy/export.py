"""Export (GDPR art. 15 and 20): everything held about a person, as one JSON document.

Each store contributes a section through an :class:`Exporter` in an
:class:`ExportRegistry` (modules register theirs, as for erasure). The foundation's
sections: ``profile`` (traits, identities, counts), ``consents`` (current and every
change), ``events`` (from the warehouse, oldest first) and ``segments`` (memberships and
their history).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from typing import Any, Final, Protocol

from sqlalchemy import Engine, select

from remarket.clock import Clock, SystemClock
from remarket.privacy.erasure import PII_VALUE, Identifier, Subject
from remarket.schema.events import as_utc
from remarket.storage.state.tables import (
    consent_history,
    consents,
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


class _Consents:
    name = "consents"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def export(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> Any:
        ids = sorted(profile_ids)
        with self._engine.connect() as conn:
            current = conn.execute(
                select(consents).where(consents.c.profile_id.in_(ids)).order_by(consents.c.purpose)
            ).all()
            history = conn.execute(
                select(consent_history)
                .where(consent_history.c.profile_id.in_(ids))
                .order_by(consent_history.c.at, consent_history.c.id)
            ).all()
        return {"current": _rows(current), "history": _rows(history)}


class _Segments:
    name = "segments"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def export(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> Any:
        ids = sorted(profile_ids)
        with self._engine.connect() as conn:
            members = conn.execute(
                select(segment_members)
                .where(segment_members.c.profile_id.in_(ids))
                .order_by(segment_members.c.segment)
            ).all()
            history = conn.execute(
                select(segment_history)
                .where(segment_history.c.profile_id.in_(ids))
                .order_by(segment_history.c.at, segment_history.c.id)
            ).all()
        return {"memberships": _rows(members), "history": _rows(history)}


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
    return ExportRegistry(
        [_Profile(engine), _Consents(engine), _Events(warehouse), _Segments(engine)]
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
