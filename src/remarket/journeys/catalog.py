"""Journey definitions in the state store: versions and the lifecycle, each change audited.

Lifecycle: ``draft`` → ``active`` ⇄ ``paused`` → ``archived``. Only an active journey
takes new profiles and moves the ones in it; pausing (the kill switch) freezes them
and stops its sends at delivery; archiving lets every profile still in it leave.
Editing makes a new version; profiles already in the journey finish on theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, select, update

from remarket.clock import Clock, SystemClock
from remarket.errors import ConflictError, NotFound
from remarket.journeys.interpreter import Plan
from remarket.privacy import AuditLog
from remarket.privacy.transactions import immediate
from remarket.schema.events import as_utc
from remarket.schema.journey import JourneyDefinition, ScheduleEntry, parse_journey
from remarket.schema.segment import DefinitionError
from remarket.segments.catalog import SegmentCatalog
from remarket.segments.membership import hold_offset
from remarket.storage.state import journey_instances, journey_versions, journeys

__all__ = ["CONSUMER", "STATUSES", "JourneyCatalog", "JourneyInfo", "JourneyVersion"]

CONSUMER: Final = "journeys"
"""The log consumer name of the journeys sink; its offset row serialises every writer
of journey state (sink, timers, lifecycle changes)."""

STATUSES: Final = ("draft", "active", "paused", "archived")
_MOVES: Final = {
    "activate": ({"draft", "paused"}, "active"),
    "pause": ({"active"}, "paused"),
    "archive": ({"draft", "active", "paused"}, "archived"),
}


@dataclass(frozen=True, slots=True)
class JourneyVersion:
    version: int
    definition: JourneyDefinition
    created_at: datetime


@dataclass(frozen=True, slots=True)
class JourneyInfo:
    id: str
    name: str
    status: str
    version: int
    definition: JourneyDefinition
    created_at: datetime
    updated_at: datetime


def _comparable(definition: JourneyDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", by_alias=True, exclude={"version"})


class JourneyCatalog:
    """Versioned journey definitions and their lifecycle.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> catalog = JourneyCatalog(engine)
    >>> d = {"id": "welcome", "entry": {"type": "event", "event": "Signed Up"},
    ...     "start": "m", "nodes": [{"id": "m", "type": "send", "channel": "email",
    ...     "template": "welcome"}]}
    >>> catalog.save(d, actor="doc")[1], catalog.save(d, actor="doc")[1]
    (True, False)
    >>> catalog.transition("welcome", "activate", actor="doc").status
    'active'
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._segments = SegmentCatalog(engine, clock=self._clock)
        self._audit = AuditLog(engine, clock=self._clock)

    # -- reading -----------------------------------------------------------------

    def get(self, journey_id: str) -> JourneyInfo | None:
        with self._engine.connect() as conn:
            return self._get(conn, journey_id)

    def require(self, journey_id: str) -> JourneyInfo:
        info = self.get(journey_id)
        if info is None:
            raise NotFound(f"no journey {journey_id!r}", field="id")
        return info

    def all(self, status: str | None = None) -> list[JourneyInfo]:
        with self._engine.connect() as conn:
            query = select(journeys.c.id).order_by(journeys.c.id)
            if status is not None:
                query = query.where(journeys.c.status == status)
            ids = conn.scalars(query).all()
            return [info for i in ids if (info := self._get(conn, i)) is not None]

    def versions(self, journey_id: str) -> list[JourneyVersion]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(journey_versions)
                .where(journey_versions.c.journey_id == journey_id)
                .order_by(journey_versions.c.version)
            )
            return [
                JourneyVersion(
                    r.version, JourneyDefinition.model_validate(r.definition), as_utc(r.created_at)
                )
                for r in rows
            ]

    def definition(self, journey_id: str, version: int) -> JourneyDefinition | None:
        with self._engine.connect() as conn:
            return self._definition(conn, journey_id, version)

    def plan(self, definition: JourneyDefinition) -> Plan:
        """The walkable form; branch conditions may use ``in_segment`` of saved segments."""
        return Plan(definition, resolve=self._segments.resolve)

    @staticmethod
    def _definition(conn: Connection, journey_id: str, version: int) -> JourneyDefinition | None:
        data = conn.scalar(
            select(journey_versions.c.definition).where(
                journey_versions.c.journey_id == journey_id, journey_versions.c.version == version
            )
        )
        return JourneyDefinition.model_validate(data) if data is not None else None

    def _get(self, conn: Connection, journey_id: str) -> JourneyInfo | None:
        row = conn.execute(select(journeys).where(journeys.c.id == journey_id)).one_or_none()
        if row is None:
            return None
        definition = self._definition(conn, journey_id, row.version)
        if definition is None:
            raise LookupError(f"journey {journey_id!r} has no version {row.version}")
        return JourneyInfo(
            id=row.id,
            name=row.name,
            status=row.status,
            version=row.version,
            definition=definition,
            created_at=as_utc(row.created_at),
            updated_at=as_utc(row.updated_at),
        )

    # -- writing -----------------------------------------------------------------

    def parse(self, data: object, *, journey_id: str | None = None) -> JourneyDefinition:
        """Validate a definition; ``journey_id`` (from a URL) fills or must match its id.

        Branch conditions are compiled too, so an unknown ``in_segment`` is refused here.
        """
        if journey_id is not None and isinstance(data, Mapping):
            given = data.get("id")
            if given is not None and given != journey_id:
                raise DefinitionError([("id", f"must be {journey_id!r}, the journey being saved")])
            data = {**data, "id": journey_id}
        definition = parse_journey(data)
        self.plan(definition)
        return definition

    def create(self, data: object, *, actor: str) -> JourneyInfo:
        """A new journey, as a draft (ConflictError if the id is taken)."""
        definition = self.parse(data)
        if self.get(definition.id) is not None:
            raise ConflictError(f"journey {definition.id!r} exists; PUT a new version", field="id")
        return self._save(definition, actor)[0]

    def save(
        self, data: object, *, actor: str, journey_id: str | None = None
    ) -> tuple[JourneyInfo, bool]:
        """Create (a draft) or add a version if the definition changed; whether it did."""
        return self._save(self.parse(data, journey_id=journey_id), actor)

    def _save(self, definition: JourneyDefinition, actor: str) -> tuple[JourneyInfo, bool]:
        now = self._clock.now()
        with immediate(self._engine) as conn:
            row = conn.execute(select(journeys).where(journeys.c.id == definition.id)).one_or_none()
            if row is not None:
                if row.status == "archived":
                    raise ConflictError(f"journey {definition.id!r} is archived", field="id")
                current = self._definition(conn, definition.id, row.version)
                if current is not None and _comparable(current) == _comparable(definition):
                    info = self._get(conn, definition.id)
                    assert info is not None
                    return info, False
            version = row.version + 1 if row is not None else 1
            stored = definition.model_copy(update={"version": version})
            conn.execute(
                journey_versions.insert().values(
                    journey_id=definition.id,
                    version=version,
                    definition=stored.model_dump(mode="json", by_alias=True),
                    created_at=now,
                )
            )
            name = definition.name or definition.id
            values: dict[str, Any] = {"version": version, "name": name, "updated_at": now}
            if row is None:
                conn.execute(
                    journeys.insert().values(
                        id=definition.id, status="draft", created_at=now, **values
                    )
                )
            else:
                if row.status == "active":
                    values["next_run_at"] = _first_run(definition, now, row.next_run_at)
                conn.execute(update(journeys).where(journeys.c.id == definition.id), values)
            action = "journey.create" if row is None else "journey.update"
            self._audit.append(
                conn, actor=actor, action=action, target=definition.id, details={"version": version}
            )
            info = self._get(conn, definition.id)
            assert info is not None
            return info, True

    def transition(self, journey_id: str, move: str, *, actor: str) -> JourneyInfo:
        """``activate``, ``pause`` or ``archive`` (ConflictError from a state that cannot).

        Archiving ends every profile's walk (reason ``archived``) in the same transaction.
        """
        allowed, target = _MOVES[move]
        now = self._clock.now()
        with immediate(self._engine) as conn:
            hold_offset(conn, CONSUMER)
            row = conn.execute(select(journeys).where(journeys.c.id == journey_id)).one_or_none()
            if row is None:
                raise NotFound(f"no journey {journey_id!r}", field="id")
            if row.status not in allowed:
                raise ConflictError(
                    f"journey {journey_id!r} is {row.status}; cannot {move} it", field="status"
                )
            values: dict[str, Any] = {"status": target, "updated_at": now}
            if target == "active":
                definition = self._definition(conn, journey_id, row.version)
                assert definition is not None
                values["next_run_at"] = _first_run(definition, now, row.next_run_at)
            else:
                values["next_run_at"] = row.next_run_at if target == "paused" else None
            conn.execute(update(journeys).where(journeys.c.id == journey_id), values)
            if target == "archived":
                _end_all(conn, journey_id, now)
            self._audit.append(
                conn,
                actor=actor,
                action=f"journey.{move}",
                target=journey_id,
                details={"version": row.version, "from": row.status},
            )
            info = self._get(conn, journey_id)
            assert info is not None
            return info


def _first_run(definition: JourneyDefinition, now: datetime, planned: datetime | None) -> Any:
    """When a schedule entry runs next: as planned, else its start, else now."""
    if not isinstance(definition.entry, ScheduleEntry):
        return None
    if planned is not None:
        return planned
    start = definition.entry.start
    return start if start is not None and start > now else now


def _end_all(conn: Connection, journey_id: str, now: datetime) -> None:
    conn.execute(
        update(journey_instances)
        .where(journey_instances.c.journey_id == journey_id, journey_instances.c.status == "active")
        .values(status="exited", reason="archived", due_at=None, exited_at=now, updated_at=now)
    )
