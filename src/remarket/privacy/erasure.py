"""Erasure (GDPR art. 17): remove a person from every store, and prove it.

A person is a :class:`Subject`: the profile ids (the live one and those merged into it)
and the identifiers of the identity graph (plus the PII values of their traits, to find
them in raw payloads). Each store has an :class:`Eraser` in an :class:`ErasureRegistry`
(modules register theirs), and so has each :class:`Recipient` the person's data went to
(an ad platform); erasure runs in steps:

0. :meth:`Erasure.notify` queues, in one transaction and before anything is destroyed,
   what tells every recipient to erase the person too (GDPR art. 17(2), 19);
1. :meth:`Erasure.begin` destroys the keys of the person's identifiers (so the log,
   its backups and JetStream hold their events only as ciphertext that nothing can open
   any more, and a replay skips them) and writes the erasure record, which tells every
   process to drop cached keys;
2. :meth:`Erasure.sweep` runs every eraser (run it again once the workers have applied
   what was in flight: rows written from events decrypted just before step 1);
3. every :class:`Scrubber` makes what was deleted unrecoverable from its store's files
   (write-ahead logs keep old page versions until a checkpoint);
4. :meth:`Erasure.finish` completes the record (counts per store) and appends it to the
   audit log. No step keeps PII: the record names the profile by a keyed hash.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from sqlalchemy import Connection, Engine, select, tuple_, update

from remarket.clock import Clock, SystemClock
from remarket.privacy.audit import AuditLog
from remarket.privacy.keyring import Keyring
from remarket.privacy.transactions import immediate
from remarket.schema.events import as_utc
from remarket.storage.state.tables import erasures, identities, profile_traits, profiles

__all__ = [
    "ID_KINDS",
    "PII_VALUE",
    "Eraser",
    "Erasure",
    "ErasureRecord",
    "ErasureRegistry",
    "Identifier",
    "Recipient",
    "Scrubber",
    "Subject",
]

Identifier = tuple[str, str]
PII_VALUE: Final = "pii"
"""Identifier kind of a PII trait value (an e-mail address, a phone number): not in the
identity graph, but searched for in raw payloads (quarantine, log)."""
ID_KINDS: Final = ("anonymous_id", "user_id")
"""The identifier kinds that name encryption keys (an event's anonymousId or userId)."""
_CHUNK: Final = 500
_log = logging.getLogger(__name__)


class Eraser(Protocol):
    """One store's part of erasure. ``identities`` are ``(kind, value)`` pairs: kinds of
    the identity graph (``anonymous_id``, ``user_id``, ``email`` → SHA-256) and
    :data:`PII_VALUE`. Both methods must be idempotent and touch only the person's rows."""

    name: str

    def erase(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        """Delete the person's rows; how many."""
        ...

    def residue(self, profile_ids: Collection[str], identities: Collection[Identifier]) -> int:
        """How many of the person's rows remain (0 after :meth:`erase`)."""
        ...


class Scrubber(Protocol):
    """Removes from one store's files what its erasers deleted: a deleted row may linger
    in a write-ahead log or in free space until it is overwritten."""

    name: str

    def scrub(self) -> bool:
        """Whether the store's files are now free of deleted rows (False: it was busy)."""
        ...


class Recipient(Protocol):
    """A third party the person's data was disclosed to (an ad platform), told of their
    erasure. :meth:`queue` runs before any of the person's keys and rows are destroyed, in
    one transaction with every other recipient's, so an acknowledged erasure has queued
    every notice. A notice names the person only by ``tags`` (keyed hashes of their
    profile ids, as the erasure record does) and by what the recipient holds already (its
    hashed identifiers): no profile id, no PII in the clear."""

    name: str

    def queue(
        self,
        conn: Connection,
        subject: Subject,
        *,
        profile_hash: str,
        tags: Collection[str],
        now: datetime,
    ) -> int:
        """Queue the notices in ``conn``'s transaction (idempotent); how many are new."""
        ...

    def pending(self, tags: Collection[str]) -> int:
        """Notices for any of ``tags`` not delivered yet (0 once they went out)."""
        ...


class ErasureRegistry:
    """The erasers of every store, run in registration order, and the recipients told.

    >>> registry = ErasureRegistry()
    >>> class Nothing:
    ...     name = "nothing"
    ...     def erase(self, profile_ids, identities): return 0
    ...     def residue(self, profile_ids, identities): return 0
    >>> registry.register(Nothing()); [e.name for e in registry]
    ['nothing']
    """

    def __init__(self, erasers: Iterable[Eraser] = ()) -> None:
        self._erasers: list[Eraser] = []
        self._recipients: list[Recipient] = []
        self._scrubbers: list[Scrubber] = []
        for eraser in erasers:
            self.register(eraser)

    def register(self, eraser: Eraser) -> None:
        if any(e.name == eraser.name for e in self._erasers):
            raise ValueError(f"an eraser named {eraser.name!r} is registered already")
        self._erasers.append(eraser)

    def inform(self, recipient: Recipient) -> None:
        """Tell ``recipient`` of every erasure from now on."""
        if any(r.name == recipient.name for r in self._recipients):
            raise ValueError(f"a recipient named {recipient.name!r} is registered already")
        self._recipients.append(recipient)

    def scrub_with(self, scrubber: Scrubber) -> None:
        """Run ``scrubber`` after the erasers of every erasure from now on."""
        self._scrubbers.append(scrubber)

    def __iter__(self) -> Iterator[Eraser]:
        return iter(list(self._erasers))

    @property
    def recipients(self) -> list[Recipient]:
        return list(self._recipients)

    @property
    def scrubbers(self) -> list[Scrubber]:
        return list(self._scrubbers)


@dataclass(frozen=True, slots=True)
class Subject:
    """A person as erasure sees them."""

    profile_ids: frozenset[str]
    identities: frozenset[Identifier]

    @property
    def empty(self) -> bool:
        return not self.profile_ids and not self.identities

    def values(self, *kinds: str) -> list[str]:
        return sorted({v for k, v in self.identities if not kinds or k in kinds})


@dataclass(frozen=True, slots=True)
class ErasureRecord:
    """What an erasure removed, without naming the person (``profile_hash`` is an HMAC
    of the profile id under the server's secret)."""

    id: int
    profile_hash: str
    actor: str
    requested_at: datetime
    completed_at: datetime
    counts: dict[str, int] = field(default_factory=dict)


def _record(row: Any) -> ErasureRecord:
    counts = row.counts if isinstance(row.counts, dict) else json.loads(row.counts)
    return ErasureRecord(
        int(row.id),
        row.profile_hash,
        row.actor,
        as_utc(row.requested_at),
        as_utc(row.completed_at),
        {str(k): int(v) for k, v in counts.items()},
    )


def _chunks(items: Collection[Any]) -> Iterator[list[Any]]:
    ordered = sorted(items)
    for start in range(0, len(ordered), _CHUNK):
        yield ordered[start : start + _CHUNK]


class Erasure:
    """Finds a person, erases them store by store, records it, reports what remains."""

    def __init__(
        self,
        engine: Engine,
        keyring: Keyring,
        registry: ErasureRegistry,
        *,
        pii_fields: Collection[str],
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._keyring = keyring
        self._registry = registry
        self._pii_fields = frozenset(pii_fields)
        self._clock = clock or SystemClock()

    # -- who ------------------------------------------------------------------------

    def subject(
        self, profile_ids: Iterable[str] = (), identifiers: Iterable[Identifier] = ()
    ) -> Subject:
        """The person holding any of these profile ids or identifiers, in full: the live
        profile and every profile merged into it, every identifier of the graph, and
        the string PII values of their traits. Unknown ids stay in (a residue check
        after erasure still looks for them)."""
        pids, ids = set(profile_ids), set(identifiers)
        with self._engine.connect() as conn:
            for chunk in _chunks(ids):
                pids.update(
                    conn.scalars(
                        select(identities.c.profile_id).where(
                            tuple_(identities.c.kind, identities.c.value).in_(chunk)
                        )
                    )
                )
            # Upwards to the live profile, then down to everything merged into it.
            frontier = set(pids)
            while frontier:
                found: set[str] = set()
                for chunk in _chunks(frontier):
                    found.update(
                        r.merged_into
                        for r in conn.execute(
                            select(profiles.c.merged_into).where(profiles.c.profile_id.in_(chunk))
                        )
                        if r.merged_into is not None
                    )
                    found.update(
                        r.profile_id
                        for r in conn.execute(
                            select(profiles.c.profile_id).where(profiles.c.merged_into.in_(chunk))
                        )
                    )
                frontier = found - pids
                pids |= found
            for chunk in _chunks(pids):
                ids.update(
                    (r.kind, r.value)
                    for r in conn.execute(
                        select(identities.c.kind, identities.c.value).where(
                            identities.c.profile_id.in_(chunk)
                        )
                    )
                )
                traits = conn.execute(
                    select(profile_traits.c.key, profile_traits.c.value).where(
                        profile_traits.c.profile_id.in_(chunk),
                        profile_traits.c.key.in_(sorted(self._pii_fields)),
                    )
                )
                ids.update((PII_VALUE, v) for _, v in traits if isinstance(v, str) and v)
        return Subject(frozenset(pids), frozenset(ids))

    def known(self, subject: Subject) -> bool:
        """Whether any of the subject's profile ids is a stored profile."""
        with self._engine.connect() as conn:
            return any(
                conn.scalar(select(profiles.c.profile_id).where(profiles.c.profile_id.in_(chunk)))
                for chunk in _chunks(subject.profile_ids)
            )

    def handles(self, subject: Subject) -> list[str]:
        """The key handles of the person's identifiers."""
        return sorted(
            {
                self._keyring.handle(kind, value)
                for kind, value in subject.identities
                if kind in ID_KINDS
            }
        )

    def profile_hash(self, subject: Subject) -> str:
        return self._keyring.digest(min(subject.profile_ids, default=""))

    def tags(self, subject: Subject) -> list[str]:
        """The keyed hashes of each of the subject's profile ids (whichever of them a
        later check names the person by, it finds their notices)."""
        return sorted({self._keyring.digest(pid) for pid in subject.profile_ids})

    # -- erase ----------------------------------------------------------------------

    def notify(self, subject: Subject) -> dict[str, int]:
        """Queue every recipient's notice in one transaction; new notices per recipient
        (``queued.<name>``). Runs first: the notices are computed from what is about to
        be destroyed, and a crash after this step leaves them queued."""
        recipients = self._registry.recipients
        if not recipients:
            return {}
        profile_hash, tags, now = self.profile_hash(subject), self.tags(subject), self._clock.now()
        with immediate(self._engine) as conn:
            return {
                f"queued.{r.name}": r.queue(
                    conn, subject, profile_hash=profile_hash, tags=tags, now=now
                )
                for r in recipients
            }

    def begin(self, subject: Subject, actor: str) -> tuple[int, int]:
        """Destroy the person's keys and open the erasure record: (record id, keys)."""
        destroyed = self._keyring.destroy(self.handles(subject))
        now = self._clock.now()
        with self._engine.begin() as conn:
            record_id = conn.execute(
                erasures.insert().values(
                    profile_hash=self.profile_hash(subject),
                    actor=actor,
                    requested_at=now,
                    completed_at=now,
                    counts={},
                )
            ).inserted_primary_key
        assert record_id is not None
        return int(record_id[0]), destroyed

    def sweep(self, subject: Subject) -> dict[str, int]:
        """Run every eraser once; rows removed per store."""
        pids, ids = subject.profile_ids, subject.identities
        return {eraser.name: eraser.erase(pids, ids) for eraser in self._registry}

    def finish(
        self, record_id: int, subject: Subject, actor: str, counts: Mapping[str, int]
    ) -> ErasureRecord:
        """Complete the record with ``counts`` and append it to the audit log."""
        now = self._clock.now()
        total = {k: int(v) for k, v in sorted(counts.items())}
        with immediate(self._engine) as conn:
            conn.execute(
                update(erasures)
                .where(erasures.c.id == record_id)
                .values(completed_at=now, counts=total)
            )
            AuditLog(self._engine, clock=self._clock).append(
                conn,
                actor=actor,
                action="profile.erase",
                target=self.profile_hash(subject),
                details={"erasure": record_id, "counts": total},
            )
            row = conn.execute(select(erasures).where(erasures.c.id == record_id)).one()
        return _record(row)

    def erase(
        self, subject: Subject, actor: str, *, settle: Callable[[], None] | None = None
    ) -> ErasureRecord:
        """All steps; ``settle`` (if given) runs between two sweeps, e.g. waiting until
        the workers have applied everything that was in the log at that point."""
        if subject.empty:
            raise ValueError("nothing to erase: the subject has no profile id or identifier")
        queued = self.notify(subject)
        record_id, keys = self.begin(subject, actor)
        counts = self.sweep(subject) | queued
        if settle is not None:
            settle()
            for name, more in self.sweep(subject).items():
                counts[name] = counts.get(name, 0) + more
        counts["pii_keys"] = counts.get("pii_keys", 0) + keys
        self.scrub()
        return self.finish(record_id, subject, actor, counts)

    def scrub(self) -> list[str]:
        """Run every scrubber; the names of those that could not finish (busy: the rows
        are deleted, and go from the files at the store's next checkpoint)."""
        unfinished = [s.name for s in self._registry.scrubbers if not s.scrub()]
        for name in unfinished:
            _log.warning("erasure: %s was busy; deleted rows leave its files later", name)
        return unfinished

    # -- check ----------------------------------------------------------------------

    def residue(self, subject: Subject) -> dict[str, int]:
        """Rows of the person left in each store (all 0 after an erasure)."""
        pids, ids = subject.profile_ids, subject.identities
        return {eraser.name: eraser.residue(pids, ids) for eraser in self._registry}

    def pending(self, subject: Subject) -> dict[str, int]:
        """Notices to recipients queued by the subject's erasure and not delivered yet
        (hashed identifiers only: not residue, but not done either)."""
        tags = self.tags(subject)
        return {r.name: r.pending(tags) for r in self._registry.recipients}

    def records(self, *, after: int = 0, limit: int = 100) -> list[ErasureRecord]:
        """Erasure records with id > ``after``, oldest first."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(erasures).where(erasures.c.id > after).order_by(erasures.c.id).limit(limit)
            )
            return [_record(row) for row in rows]
