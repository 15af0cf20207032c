"""Segment definitions in the state store: created, edited (a new version), deleted, listed.

Saving a definition only records it and marks the segment *pending*; the segment
worker (:class:`~remarket.segments.live.LiveSegments`) then backfills it from the
warehouse and maintains it in real time from there on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select, update

from remarket.clock import Clock, SystemClock
from remarket.errors import ConflictError, NotFound
from remarket.privacy import AuditLog
from remarket.schema.events import as_utc
from remarket.schema.segment import DefinitionError, SegmentDefinition, parse_segment
from remarket.segments.desugar import CoreSegment, desugar
from remarket.segments.membership import Transition, hold_offset, write_transitions
from remarket.storage.state import (
    segment_members,
    segment_states,
    segment_timers,
    segment_versions,
    segments,
)

__all__ = ["SegmentCatalog", "SegmentInfo", "SegmentVersion"]


@dataclass(frozen=True, slots=True)
class SegmentVersion:
    version: int
    definition: SegmentDefinition
    created_at: datetime


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A segment's current version and whether its members reflect it yet."""

    name: str
    version: int
    live_version: int | None
    pending: bool
    definition: SegmentDefinition
    created_at: datetime
    updated_at: datetime

    @property
    def status(self) -> str:
        """``live`` once members reflect the current version, else ``backfilling``."""
        return "live" if not self.pending and self.live_version == self.version else "backfilling"


def _comparable(definition: SegmentDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", exclude={"version"})


class SegmentCatalog:
    """Named, versioned segment definitions; an unchanged definition makes no new version.

    Every change is recorded in the audit log (as ``actor``: an API key id, ``user:<id>``
    or ``cli``) in the transaction that makes it.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> catalog = SegmentCatalog(engine)
    >>> d = {"name": "buyers", "entry": "p", "nodes": [
    ...     {"id": "p", "type": "performed", "event": "Order Completed"}]}
    >>> catalog.save(d)[1], catalog.save(d)[1], catalog.get("buyers").version
    (True, False, 1)
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._audit = AuditLog(engine, clock=self._clock)

    # -- reading -----------------------------------------------------------------

    def get(self, name: str) -> SegmentInfo | None:
        with self._engine.connect() as conn:
            return self._get(conn, name)

    def all(self) -> list[SegmentInfo]:
        """Every segment that exists, by name."""
        with self._engine.connect() as conn:
            names = conn.scalars(
                select(segments.c.name)
                .where(segments.c.deleted_at.is_(None))
                .order_by(segments.c.name)
            ).all()
            return [info for n in names if (info := self._get(conn, n)) is not None]

    def versions(self, name: str) -> list[SegmentVersion]:
        """Every version of a segment, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(segment_versions)
                .where(segment_versions.c.name == name)
                .order_by(segment_versions.c.version)
            )
            return [
                SegmentVersion(
                    r.version, SegmentDefinition.model_validate(r.definition), as_utc(r.created_at)
                )
                for r in rows
            ]

    def definition(self, name: str, version: int) -> SegmentDefinition | None:
        with self._engine.connect() as conn:
            return self._definition(conn, name, version)

    def resolve(self, name: str) -> SegmentDefinition | None:
        """The current definition of a segment that exists (for ``in_segment``)."""
        info = self.get(name)
        return info.definition if info is not None else None

    def compile(self, definition: SegmentDefinition) -> CoreSegment:
        """The core form, with ``in_segment`` references inlined (DefinitionError if bad)."""
        return desugar(definition, resolve=self.resolve)

    @staticmethod
    def _definition(conn: Connection, name: str, version: int) -> SegmentDefinition | None:
        data = conn.scalar(
            select(segment_versions.c.definition).where(
                segment_versions.c.name == name, segment_versions.c.version == version
            )
        )
        return SegmentDefinition.model_validate(data) if data is not None else None

    def _get(self, conn: Connection, name: str) -> SegmentInfo | None:
        row = conn.execute(
            select(segments).where(segments.c.name == name, segments.c.deleted_at.is_(None))
        ).one_or_none()
        if row is None:
            return None
        definition = self._definition(conn, name, row.version)
        if definition is None:
            raise LookupError(f"segment {name!r} has no version {row.version}")
        return SegmentInfo(
            name=name,
            version=row.version,
            live_version=row.live_version,
            pending=row.pending,
            definition=definition,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
        )

    # -- writing -----------------------------------------------------------------

    def parse(self, data: object, *, name: str | None = None) -> SegmentDefinition:
        """Validate a definition; ``name`` (from a URL) fills or must match its name."""
        if name is not None and isinstance(data, Mapping):
            given = data.get("name")
            if given is not None and given != name:
                raise DefinitionError([("name", f"must be {name!r}, the segment being saved")])
            data = {**data, "name": name}
        definition = parse_segment(data)
        self.compile(definition)
        return definition

    def create(self, data: object, *, actor: str = "cli") -> SegmentInfo:
        """A new segment (ConflictError if one of that name exists)."""
        definition = self.parse(data)
        return self._save(definition, actor, only_new=True)[0]

    def save(
        self, data: object, *, name: str | None = None, actor: str = "cli"
    ) -> tuple[SegmentInfo, bool]:
        """Create, or add a version if the definition changed; whether anything changed."""
        return self._save(self.parse(data, name=name), actor)

    def _save(
        self, definition: SegmentDefinition, actor: str, *, only_new: bool = False
    ) -> tuple[SegmentInfo, bool]:
        now = self._clock.now()
        uses = sorted(self.compile(definition).references)
        with self._engine.begin() as conn:
            row = conn.execute(
                select(segments).where(segments.c.name == definition.name)
            ).one_or_none()
            exists = row is not None and row.deleted_at is None
            if row is not None and exists:
                if only_new:
                    raise ConflictError(
                        f"segment {definition.name!r} exists; PUT a new version", field="name"
                    )
                current = self._definition(conn, definition.name, row.version)
                if current is not None and _comparable(current) == _comparable(definition):
                    info = self._get(conn, definition.name)
                    assert info is not None
                    return info, False
            version = row.version + 1 if row is not None else 1
            stored = definition.model_copy(update={"version": version})
            conn.execute(
                segment_versions.insert().values(
                    name=definition.name,
                    version=version,
                    definition=stored.model_dump(mode="json"),
                    uses=uses,
                    created_at=now,
                )
            )
            values = {"version": version, "pending": True, "updated_at": now, "deleted_at": None}
            if row is None:
                first = {"name": definition.name, "live_version": None, "generation": 0}
                conn.execute(segments.insert().values(first | {"created_at": now} | values))
            else:
                conn.execute(update(segments).where(segments.c.name == definition.name), values)
            self._mark_dependents(conn, definition.name)
            self._audit.append(
                conn,
                actor=actor,
                action="segment.update" if exists else "segment.create",
                target=definition.name,
                details={"version": version},
            )
            info = self._get(conn, definition.name)
            assert info is not None
            return info, True

    def _mark_dependents(self, conn: Connection, name: str) -> None:
        """Segments that inline ``name`` must be backfilled again."""
        current = (
            select(segments.c.name)
            .join(
                segment_versions,
                (segment_versions.c.name == segments.c.name)
                & (segment_versions.c.version == segments.c.version),
            )
            .where(segments.c.deleted_at.is_(None))
            .add_columns(segment_versions.c.uses)
        )
        dependents = [n for n, uses in conn.execute(current) if name in uses]
        if dependents:
            conn.execute(
                update(segments).where(segments.c.name.in_(dependents)).values(pending=True)
            )

    def delete(self, name: str, *, actor: str = "cli") -> None:
        """Delete a segment: its members exit (published), its states and timers go.

        Refused (ConflictError) while another segment uses it through ``in_segment``.
        """
        now = self._clock.now()
        users = [
            info.name
            for info in self.all()
            if info.name != name and name in self.compile(info.definition).references
        ]
        if users:
            raise ConflictError(
                f"segment {name!r} is used by {', '.join(users)}; change those first",
                field="name",
            )
        with self._engine.begin() as conn:
            hold_offset(conn)
            row = conn.execute(
                select(segments).where(segments.c.name == name, segments.c.deleted_at.is_(None))
            ).one_or_none()
            if row is None:
                raise NotFound(f"no segment {name!r}", field="name")
            members = conn.execute(
                select(segment_members.c.profile_id, segment_members.c.version).where(
                    segment_members.c.segment == name
                )
            ).all()
            write_transitions(
                conn, [Transition(name, version, pid, False, now) for pid, version in members]
            )
            for table in (segment_states, segment_timers):
                conn.execute(table.delete().where(table.c.segment == name))
            conn.execute(
                update(segments)
                .where(segments.c.name == name)
                .values(deleted_at=now, updated_at=now, live_version=None, pending=False)
            )
            self._audit.append(
                conn,
                actor=actor,
                action="segment.delete",
                target=name,
                details={"version": row.version},
            )
