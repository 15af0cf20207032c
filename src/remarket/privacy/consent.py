"""The consent ledger: per profile and purpose, the current state and its full history."""

from __future__ import annotations

import hashlib
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from sqlalchemy import Connection, Engine, Row, and_, or_, select
from sqlalchemy.dialects import postgresql, sqlite

from remarket.clock import Clock, SystemClock
from remarket.privacy.audit import AuditLog
from remarket.privacy.keyring import handle_secret, keyed_digest
from remarket.privacy.transactions import immediate
from remarket.schema.events import as_utc
from remarket.storage.state import consent_history, consents, profiles, segment_outbox
from remarket.storage.state.published import chunks, identify_rows

__all__ = [
    "LEGAL_BASES",
    "PUBLISHER_SOURCE",
    "PURPOSES",
    "STATES",
    "ConsentLedger",
    "ConsentRecord",
    "LegalBasis",
    "Purpose",
    "State",
    "is_allowed",
]

Purpose = Literal["analytics", "personalization", "email", "sms", "push", "advertising"]
State = Literal["granted", "denied"]
LegalBasis = Literal[
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
]

PURPOSES: Final[tuple[Purpose, ...]] = (
    "analytics",
    "personalization",
    "email",
    "sms",
    "push",
    "advertising",
)
STATES: Final[tuple[State, ...]] = ("granted", "denied")
PUBLISHER_SOURCE: Final = "consent"
"""The ``source_id`` of the identify events the ledger publishes on every change."""
LEGAL_BASES: Final[tuple[LegalBasis, ...]] = (
    "consent",
    "contract",
    "legal_obligation",
    "vital_interests",
    "public_task",
    "legitimate_interests",
)
"""The lawful bases of GDPR art. 6(1), (a) to (f)."""


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """One purpose's state for one profile, as set by one source at one time.

    ``ref`` says what set it (``"<source>:<messageId>"``, ``"api:<uuid>"``) and breaks
    ties between records of the same time, so any order of records gives one answer.
    """

    profile_id: str
    purpose: str
    state: str
    source: str
    legal_basis: str
    at: datetime
    ref: str

    def newer_than(self, other: ConsentRecord) -> bool:
        return (self.at, self.ref) > (other.at, other.ref)

    def same_choice(self, other: ConsentRecord) -> bool:
        return (self.state, self.source, self.legal_basis) == (
            other.state,
            other.source,
            other.legal_basis,
        )


def is_allowed(current: Mapping[str, ConsentRecord], purpose: str) -> bool:
    """Whether ``purpose`` may be used: only an explicit grant allows it.

    >>> from datetime import UTC
    >>> r = ConsentRecord("p_1", "email", "granted", "api", "consent", datetime.now(UTC), "x")
    >>> is_allowed({"email": r}, "email"), is_allowed({"email": r}, "sms")
    (True, False)
    """
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {list(PURPOSES)}, got {purpose!r}")
    record = current.get(purpose)
    return record is not None and record.state == "granted"


def _known_refs(conn: Connection, family: list[str], refs: set[str]) -> set[tuple[str, str]]:
    """``(purpose, ref)`` of the family's history rows among ``refs``."""
    return {
        (purpose, ref)
        for chunk in chunks(sorted(refs))
        for purpose, ref in conn.execute(
            select(consent_history.c.purpose, consent_history.c.ref).where(
                consent_history.c.profile_id.in_(family), consent_history.c.ref.in_(chunk)
            )
        )
    }


def _changes(
    before: Mapping[str, ConsentRecord], after: Mapping[str, ConsentRecord], record: ConsentRecord
) -> bool:
    """Whether ``record`` became its purpose's current record with another state."""
    held = before.get(record.purpose)
    return after[record.purpose] is record and (held is None or held.state != record.state)


def _published(record: ConsentRecord) -> dict[str, Any]:
    """The record as a published event carries it (its profile and time are the event's)."""
    return {k: v for k, v in _values(record).items() if k not in ("profile_id", "at")}


def _record(row: Row[Any]) -> ConsentRecord:
    return ConsentRecord(
        row.profile_id, row.purpose, row.state, row.source, row.legal_basis, as_utc(row.at), row.ref
    )


def _values(record: ConsentRecord) -> dict[str, Any]:
    return {
        "profile_id": record.profile_id,
        "purpose": record.purpose,
        "state": record.state,
        "source": record.source,
        "legal_basis": record.legal_basis,
        "at": record.at,
        "ref": record.ref,
    }


class ConsentLedger:
    """Consent per profile and purpose: the current state and every change, kept apart.

    A profile merged into another keeps its rows; reads gather the survivor's and those
    of every profile merged into it, the newest record per purpose winning.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> ledger = ConsentLedger(engine)
    >>> _ = ledger.set("p_1", {"email": True, "sms": False}, actor="cli")
    >>> ledger.allowed("p_1", "email"), ledger.allowed("p_1", "sms")
    (True, False)
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._audit = AuditLog(engine, clock=self._clock)
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
        self._secret: bytes | None = None

    def _audit_target(self, profile_id: str) -> str:
        """The profile as the audit log names it: a keyed hash (the log outlives an
        erasure; the hash of a profile id names nobody once the profile is gone)."""
        if self._secret is None:
            self._secret = handle_secret(self._engine, self._clock)
        return keyed_digest(self._secret, profile_id)

    @property
    def engine(self) -> Engine:
        return self._engine

    # -- writing ---------------------------------------------------------------

    def set(
        self,
        profile_id: str,
        states: Mapping[str, bool],
        *,
        actor: str,
        source: str = "api",
        legal_basis: str = "consent",
        at: datetime | None = None,
    ) -> list[ConsentRecord]:
        """Record an explicit choice per purpose (True: granted), audited as ``actor``.

        Every call is kept in the history, even when it repeats the current state: a
        renewed consent is a fact too.
        """
        if not states:
            raise ValueError("give at least one purpose")
        for purpose in states:
            if purpose not in PURPOSES:
                raise ValueError(f"purpose must be one of {list(PURPOSES)}, got {purpose!r}")
        if legal_basis not in LEGAL_BASES:
            raise ValueError(f"legal_basis must be one of {list(LEGAL_BASES)}")
        when = as_utc(at) if at is not None else self._clock.now()
        ref = f"{source}:{uuid.uuid4().hex}"
        records = [
            ConsentRecord(
                profile_id,
                purpose,
                "granted" if granted else "denied",
                source,
                legal_basis,
                when,
                ref,
            )
            for purpose, granted in sorted(states.items())
        ]
        target = self._audit_target(profile_id)  # before the write lock: it may write
        with immediate(self._engine) as conn:
            written = self.record(conn, profile_id, records, always=True)
            self._audit.append(
                conn,
                actor=actor,
                action="consent.set",
                target=target,
                details={
                    "purposes": {r.purpose: r.state for r in records},
                    "source": source,
                    "legal_basis": legal_basis,
                },
            )
        return written

    def record(
        self,
        conn: Connection,
        profile_id: str,
        records: Sequence[ConsentRecord],
        *,
        always: bool = False,
    ) -> list[ConsentRecord]:
        """Append ``records`` for the live ``profile_id`` inside the caller's transaction.

        Unless ``always``, a record that repeats the current choice (state, source and
        legal basis) is skipped: a CMP resends its TC string with every event.
        """
        live, family = self._family(conn, profile_id)
        current = self._current(conn, family)
        before = dict(current)
        known = _known_refs(conn, family, {r.ref for r in records})
        written: list[ConsentRecord] = []
        now = self._clock.now()
        for record in sorted(records, key=lambda r: (r.at, r.ref, r.purpose)):
            held = current.get(record.purpose)
            if (record.purpose, record.ref) in known:
                continue  # already recorded: a replayed event, or the ledger's own
            if not always and held is not None and held.same_choice(record):
                continue
            record = ConsentRecord(
                profile_id,
                record.purpose,
                record.state,
                record.source,
                record.legal_basis,
                record.at,
                record.ref,
            )
            written.append(record)
            if held is None or record.newer_than(held):
                current[record.purpose] = record
        if not written:
            return written
        conn.execute(consent_history.insert(), [_values(r) | {"recorded_at": now} for r in written])
        self._publish(conn, live, [r for r in written if _changes(before, current, r)])
        # One row per purpose: the newest of this call, if it beats what is stored.
        newest = [_values(r) for r in written if current[r.purpose] is r]
        if newest:
            stmt = self._insert(consents)
            excluded = stmt.excluded
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[consents.c.profile_id, consents.c.purpose],
                    set_={
                        name: excluded[name]
                        for name in ("state", "source", "legal_basis", "at", "ref")
                    },
                    where=or_(
                        excluded.at > consents.c.at,
                        and_(excluded.at == consents.c.at, excluded.ref > consents.c.ref),
                    ),
                ),
                newest,
            )
        return written

    def _publish(self, conn: Connection, profile_id: str, changed: list[ConsentRecord]) -> None:
        """Queue, for the log, an identify event per instant at which a purpose's current
        state changed: ``traits.consent.<purpose>`` true or false, the records themselves
        in ``context.consent.ledger`` (a replay of the log rebuilds the ledger from them).
        """
        by_time: dict[datetime, list[ConsentRecord]] = defaultdict(list)
        for record in changed:
            by_time[record.at].append(record)
        items: list[tuple[str, str, Any, datetime]] = []
        contexts: list[dict[str, Any]] = []
        for at, group in sorted(by_time.items()):
            key = "\x1f".join([profile_id, *sorted(f"{r.purpose}:{r.ref}" for r in group)])
            digest = hashlib.blake2b(key.encode(), digest_size=16).hexdigest()
            traits = {"consent": {r.purpose: r.state == "granted" for r in group}}
            items.append((profile_id, f"consent-{digest}", traits, at))
            contexts.append({"consent": {"ledger": [_published(r) for r in group]}})
        rows = identify_rows(conn, items, source_id=PUBLISHER_SOURCE, contexts=contexts)
        if rows:
            conn.execute(self._insert(segment_outbox).on_conflict_do_nothing(), rows)

    # -- reading ---------------------------------------------------------------

    @staticmethod
    def _family(conn: Connection, profile_id: str) -> tuple[str, list[str]]:
        """The live id for ``profile_id`` and every id merged into it (itself first)."""
        merged_into = conn.scalar(
            select(profiles.c.merged_into).where(profiles.c.profile_id == profile_id)
        )
        live = merged_into or profile_id
        others = conn.scalars(select(profiles.c.profile_id).where(profiles.c.merged_into == live))
        return live, [live, *sorted(others)]

    @staticmethod
    def _current(conn: Connection, ids: list[str]) -> dict[str, ConsentRecord]:
        """The newest record per purpose among the family ``ids``."""
        best: dict[str, ConsentRecord] = {}
        for row in conn.execute(select(consents).where(consents.c.profile_id.in_(ids))):
            record = _record(row)
            held = best.get(record.purpose)
            if held is None or record.newer_than(held):
                best[record.purpose] = record
        return best

    def current(self, profile_id: str) -> dict[str, ConsentRecord]:
        """The newest record per purpose (purposes never set are absent)."""
        with self._engine.connect() as conn:
            return self._current(conn, self._family(conn, profile_id)[1])

    def history(self, profile_id: str) -> list[ConsentRecord]:
        """Every record, oldest first (by time, then in the order recorded)."""
        with self._engine.connect() as conn:
            _, ids = self._family(conn, profile_id)
            rows = conn.execute(
                select(consent_history)
                .where(consent_history.c.profile_id.in_(ids))
                .order_by(consent_history.c.at, consent_history.c.id)
            )
            return [_record(row) for row in rows]

    def allowed(self, profile_id: str, purpose: str) -> bool:
        """Whether ``purpose`` may be used for the person: only an explicit grant allows.

        The check channels (before a send or an audience upload) and models (before a
        score, purpose ``personalization``) make.
        """
        return is_allowed(self.current(profile_id), purpose)
