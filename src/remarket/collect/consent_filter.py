"""Consent where data enters: events of a person without analytics consent are dropped,
or kept only pseudonymised (``consent_action``).

The decision is made per event without a database round trip: from the consent the
event carries (identify ``traits.consent``, ``context.consent``, a TCF string), else
from :class:`ConsentCache`, the ledger's analytics decisions by identity (userId,
anonymousId), reloaded every ``guard_refresh_s``. With ``consent_required`` off, only an
explicit denial counts (a person with no recorded decision is collected as before);
with it on, only an explicit grant lets events through.

An event that carries a consent decision is always kept as it is, whatever it says: it
is the record of that decision, and the ledger learns it from the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from sqlalchemy import Engine, func, select

from remarket.collect.pseudonymise import Pseudonymiser
from remarket.collect.stages import InFlight
from remarket.config import Settings
from remarket.privacy.sink import consents_in
from remarket.schema.events import Message
from remarket.storage.state import consents, identities, profiles
from remarket.storage.state.published import chunks

__all__ = ["ConsentCache", "ConsentFilter"]

_PURPOSE: Final = "analytics"
# The identity kinds the profiles worker writes (remarket.profiles.identity).
_KINDS: Final = {"user_id": "u", "anonymous_id": "a"}


class ConsentCache:
    """Analytics consent by identity, from the ledger: which ids are denied, granted.

    Ids as the identities table holds them, one set per kind (userId, anonymousId), so
    a lookup builds no key. :meth:`note` records a decision an event carried; it wins
    over the ledger for two reloads, time enough for the consent worker to record it.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.denied: dict[str, frozenset[str]] = {"u": frozenset(), "a": frozenset()}
        self.granted: dict[str, frozenset[str]] = {"u": frozenset(), "a": frozenset()}
        self._noted: dict[tuple[str, str], tuple[bool, int]] = {}
        self._noted_denials = 0
        self._generation = 0

    def refresh(self) -> None:
        """Reload from the ledger (blocking: run it off the event loop)."""
        newest: dict[str, tuple[Any, str, str]] = {}
        live = func.coalesce(profiles.c.merged_into, consents.c.profile_id)
        joined = consents.outerjoin(profiles, profiles.c.profile_id == consents.c.profile_id)
        query = (
            select(live, consents.c.state, consents.c.at, consents.c.ref)
            .select_from(joined)
            .where(consents.c.purpose == _PURPOSE)
        )
        denied: dict[str, set[str]] = {"u": set(), "a": set()}
        granted: dict[str, set[str]] = {"u": set(), "a": set()}
        with self._engine.connect() as conn:
            for profile_id, state, at, ref in conn.execute(query):
                held = newest.get(profile_id)
                if held is None or (at, ref) > (held[0], held[1]):
                    newest[profile_id] = (at, ref, state)
            for chunk in chunks(sorted(newest)):
                rows = conn.execute(
                    select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                        identities.c.profile_id.in_(chunk), identities.c.kind.in_(_KINDS)
                    )
                )
                for kind, value, profile_id in rows:
                    chosen = granted if newest[profile_id][2] == "granted" else denied
                    chosen[_KINDS[kind]].add(value)
        # Swapped without a lock: the event loop reads these between its own statements.
        self.denied = {k: frozenset(v) for k, v in denied.items()}
        self.granted = {k: frozenset(v) for k, v in granted.items()}
        self._generation += 1
        oldest = self._generation - 1
        noted = {k: v for k, v in list(self._noted.items()) if v[1] >= oldest}
        self._noted = noted
        self._noted_denials = sum(1 for granted_, _ in noted.values() if not granted_)

    @property
    def nobody_denied(self) -> bool:
        """Whether no identity is known to be denied (the common case: nothing to do)."""
        return not self.denied["u"] and not self.denied["a"] and not self._noted_denials

    def note(self, keys: Iterable[tuple[str, str]], granted: bool) -> None:
        """A decision an event carried, in force until the ledger has it."""
        for key in keys:
            self._noted[key] = (granted, self._generation)
            if not granted:
                self._noted_denials += 1

    def allows(self, user_id: str | None, anonymous_id: str | None, required: bool) -> bool:
        """Whether events of a person with these ids may be collected."""
        if self._noted:
            decided = [
                n[0]
                for k in (("u", user_id), ("a", anonymous_id))
                if k[1] is not None and (n := self._noted.get(k)) is not None  # type: ignore[arg-type]
            ]
            if decided:
                return all(decided)
        denied = self.denied
        if user_id in denied["u"] or anonymous_id in denied["a"]:
            return False
        granted = self.granted
        return not required or user_id in granted["u"] or anonymous_id in granted["a"]


def _carried(message: Message) -> bool | None:
    """The analytics decision an event carries, if any (the last one it names)."""
    decision = None
    for purpose, granted, _ in consents_in(message):
        if purpose == _PURPOSE:
            decision = granted
    return decision


class ConsentFilter:
    """The consent stage: decides per event, drops or pseudonymises those without consent."""

    def __init__(
        self,
        settings: Settings,
        cache: ConsentCache,
        pseudonymiser: Pseudonymiser,
        count: Callable[[str, str, int], None],
    ) -> None:
        self._cache = cache
        self._required = settings.consent_required
        self._drop = settings.consent_action == "drop"
        self._pseudonymiser = pseudonymiser
        self._count = count

    def __call__(self, batch: InFlight) -> None:
        cache, required = self._cache, self._required
        if not required and cache.nobody_denied:
            # Nobody has said no: only events carrying a decision need a look, and the
            # request's bytes say at once whether any may (no copy of each context).
            if not any(b"consent" in raw for raw in batch.raw):
                return
        kept = []
        dropped = pseudonymised = 0
        raws = batch.raw
        for event in batch.events:
            m = event.message
            # After the pseudonymiser: ids are pseudonyms when configured, as the
            # identities table holds them. Validation made them text.
            user_id: str | None = m.user_id  # type: ignore[assignment]
            anonymous_id: str | None = m.anonymous_id  # type: ignore[assignment]
            # The raw event as sent: a byte test without copying the context.
            if b"consent" in raws[event.index]:
                carried = _carried(m)
                if carried is not None:
                    keys = [("u", user_id), ("a", anonymous_id)]
                    cache.note([k for k in keys if k[1] is not None], carried)  # type: ignore[misc]
                    kept.append(event)
                    continue
            if cache.allows(user_id, anonymous_id, required):
                kept.append(event)
            elif self._drop:
                dropped += 1
            else:
                self._pseudonymiser.fully(m)
                pseudonymised += 1
                kept.append(event)
        batch.events = kept
        batch.dropped += dropped
        if dropped:
            self._count(batch.source.id, "consent_dropped", dropped)
        if pseudonymised:
            self._count(batch.source.id, "consent_pseudonymised", pseudonymised)
