"""The audit log: append-only, hash-chained entries of who changed what, and its check.

Each entry holds the SHA-256 of the previous entry and its own hash over its canonical
form (:func:`entry_hash`): sequence number, time, actor, action, target, details and
the previous hash. Altering, removing, reordering or inserting an entry breaks the chain
at that entry (or, for the last entries, disagrees with the head row), which
:func:`verify_chain` reports. Appends lock the head row, so concurrent writers queue up
instead of forking the chain. Details hold ids, counts and hashes, never personal data.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from sqlalchemy import Connection, Engine, Row, select, update
from sqlalchemy.dialects import postgresql, sqlite

from remarket.clock import Clock, SystemClock
from remarket.privacy.transactions import immediate
from remarket.schema.events import as_utc
from remarket.storage.state import audit_head, audit_log

__all__ = ["GENESIS", "AuditEntry", "AuditLog", "AuditProblem", "entry_hash", "verify_chain"]

GENESIS: Final = "0" * 64
"""The previous hash of the first entry."""

_HEAD_ID: Final = 1
_SCALARS: Final = (str, int, bool, type(None))
_PAGE: Final = 1000


def _check_details(value: Any, path: str) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            if not isinstance(key, str):
                raise TypeError(f"audit details keys must be strings, got {key!r} at {path}")
            _check_details(inner, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, inner in enumerate(value):
            _check_details(inner, f"{path}[{index}]")
    elif not isinstance(value, _SCALARS):
        # Floats would not survive every JSON round trip bit for bit; ids and counts do.
        raise TypeError(
            f"audit details hold strings, integers, booleans and null only; {path} is "
            f"{type(value).__name__}"
        )


def canonical_details(details: Mapping[str, Any]) -> str:
    """Details as canonical JSON: sorted keys, no whitespace, ASCII only."""
    _check_details(details, "details")
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _instant(at: datetime) -> str:
    return as_utc(at).isoformat(timespec="microseconds")


def entry_hash(
    seq: int, at: datetime, actor: str, action: str, target: str, details: str, prev_hash: str
) -> str:
    """SHA-256 (hex) of an entry's canonical form; ``details`` is the canonical JSON.

    >>> from datetime import UTC
    >>> len(entry_hash(1, datetime(2026, 1, 1, tzinfo=UTC), "cli", "key.create", "k1",
    ...     "{}", GENESIS))
    64
    """
    canonical = json.dumps(
        [seq, _instant(at), actor, action, target, details, prev_hash],
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the chain; ``details`` is its canonical JSON text."""

    seq: int
    at: datetime
    actor: str
    action: str
    target: str
    details: str
    prev_hash: str
    hash: str

    def expected_hash(self) -> str:
        return entry_hash(
            self.seq, self.at, self.actor, self.action, self.target, self.details, self.prev_hash
        )


@dataclass(frozen=True, slots=True)
class AuditProblem:
    """Where the chain breaks: the first bad entry's number and what is wrong there."""

    seq: int
    reason: str


def verify_chain(entries: Iterable[AuditEntry], head: tuple[int, str]) -> AuditProblem | None:
    """The first break in ``entries`` (in stored order) against ``head``, or None.

    >>> from datetime import UTC
    >>> at = datetime(2026, 1, 1, tzinfo=UTC)
    >>> h = entry_hash(1, at, "cli", "key.create", "k1", "{}", GENESIS)
    >>> e = AuditEntry(1, at, "cli", "key.create", "k1", "{}", GENESIS, h)
    >>> verify_chain([e], (1, h)) is None, verify_chain([e], (2, "x")).seq
    (True, 2)
    """
    expected_seq, previous = 1, GENESIS
    for entry in entries:
        if entry.seq > expected_seq:
            return AuditProblem(expected_seq, f"entry {expected_seq} is missing")
        if entry.seq != expected_seq:
            return AuditProblem(entry.seq, f"entry {entry.seq} is out of order")
        if entry.seq > head[0]:
            return AuditProblem(entry.seq, f"entry {entry.seq} is past the head ({head[0]})")
        if entry.prev_hash != previous:
            return AuditProblem(entry.seq, "its previous hash is not the previous entry's hash")
        if entry.expected_hash() != entry.hash:
            return AuditProblem(entry.seq, "its content does not match its hash")
        expected_seq, previous = entry.seq + 1, entry.hash
    if expected_seq - 1 != head[0]:
        return AuditProblem(
            expected_seq, f"entry {expected_seq} is missing (the head is {head[0]})"
        )
    if previous != head[1]:
        return AuditProblem(head[0], "the last entry's hash is not the head's")
    return None


def _entry(row: Row[Any]) -> AuditEntry:
    return AuditEntry(
        int(row.seq),
        as_utc(row.at),
        row.actor,
        row.action,
        row.target,
        row.details,
        row.prev_hash,
        row.hash,
    )


class AuditLog:
    """Appends to and reads the audit chain in the state store.

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> log = AuditLog(engine)
    >>> log.record("cli", "source.create", "s1", {"name": "web"}).seq
    1
    >>> log.verify() is None
    True
    """

    def __init__(self, engine: Engine, *, clock: Clock | None = None) -> None:
        self._engine = engine
        self._clock = clock or SystemClock()
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    def record(
        self, actor: str, action: str, target: str, details: Mapping[str, Any] | None = None
    ) -> AuditEntry:
        """Append one entry in its own transaction."""
        with immediate(self._engine) as conn:
            return self.append(conn, actor=actor, action=action, target=target, details=details)

    def append(
        self,
        conn: Connection,
        *,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry inside the caller's transaction (committed with its change).

        On SQLite the transaction must hold the write lock already (it has written, or
        began with :func:`~remarket.privacy.transactions.immediate`).
        """
        for name, value, limit in (("actor", actor, 64), ("action", action, 64)):
            if not value or len(value) > limit:
                raise ValueError(f"audit {name} must be 1 to {limit} characters, got {value!r}")
        if len(target) > 256:
            raise ValueError("audit target must be at most 256 characters")
        text = canonical_details(details or {})
        # Created by the first append; ON CONFLICT lets concurrent first appends queue up.
        conn.execute(
            self._insert(audit_head)
            .values(id=_HEAD_ID, seq=0, hash=GENESIS)
            .on_conflict_do_nothing(index_elements=[audit_head.c.id])
        )
        head = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash)
            .where(audit_head.c.id == _HEAD_ID)
            .with_for_update()
        ).one()
        seq = int(head.seq) + 1
        at = self._clock.now()
        digest = entry_hash(seq, at, actor, action, target, text, head.hash)
        conn.execute(
            audit_log.insert().values(
                seq=seq,
                at=at,
                actor=actor,
                action=action,
                target=target,
                details=text,
                prev_hash=head.hash,
                hash=digest,
            )
        )
        conn.execute(
            update(audit_head).where(audit_head.c.id == _HEAD_ID).values(seq=seq, hash=digest)
        )
        return AuditEntry(seq, at, actor, action, target, text, head.hash, digest)

    @staticmethod
    def _page(conn: Connection, after: int, limit: int) -> list[AuditEntry]:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.seq > after).order_by(audit_log.c.seq).limit(limit)
        )
        return [_entry(row) for row in rows]

    @staticmethod
    def _head(conn: Connection) -> tuple[int, str]:
        row = conn.execute(
            select(audit_head.c.seq, audit_head.c.hash).where(audit_head.c.id == _HEAD_ID)
        ).one_or_none()
        return (int(row.seq), row.hash) if row is not None else (0, GENESIS)

    def entries(self, *, after: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Entries after number ``after``, oldest first."""
        with self._engine.connect() as conn:
            return self._page(conn, after, limit)

    def head(self) -> tuple[int, str]:
        """The number and hash of the last entry (0 and :data:`GENESIS` when empty)."""
        with self._engine.connect() as conn:
            return self._head(conn)

    def verify(self) -> AuditProblem | None:
        """The first altered, removed, reordered or inserted entry, or None if intact.

        Reads one snapshot, so entries appended meanwhile do not look like forgeries.
        """
        with self._engine.connect() as conn:
            if self._engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # a read transaction: one WAL snapshot
            else:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                head = self._head(conn)

                def every() -> Iterable[AuditEntry]:
                    after = 0
                    while True:
                        page = self._page(conn, after, _PAGE)
                        yield from page
                        if len(page) < _PAGE:
                            return
                        after = page[-1].seq

                return verify_chain(every(), head)
            finally:
                conn.rollback()
