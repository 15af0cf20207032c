"""The consent worker: consent carried by events (identify traits, CMP context) into the ledger.

Read from each event:

- identify ``traits.consent``: ``{"email": true, "sms": false, ...}`` (source ``identify``);
- ``context.consent.tcString`` (or ``context.gdpr_consent``, as Prebid and AMP name it):
  an IAB TCF v2.2 string, mapped by :data:`~remarket.privacy.tcf.TCF_PURPOSES` (source
  ``tcf``);
- ``context.consent.categoryPreferences``: Segment's consent object, for categories
  named like a remarket purpose, case-insensitively (source ``context``).

The legal basis of all of them is ``consent``. Unknown purposes and non-boolean values
are ignored; a TC string that does not decode is logged and ignored (the event itself
was valid and is kept).

Every change of a purpose's current state, from any source (the API and one-click
unsubscribe included), is published back to the log by the ledger as an identify event
of source ``consent``: ``traits.consent.<purpose>`` for profiles and segments, and the
records themselves in ``context.consent.ledger``. This sink skips records it already
holds (by ref), so those events change nothing live, while a replay of the log into
empty stores rebuilds the whole ledger, API choices included.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from sqlalchemy import select, tuple_

from remarket.privacy.consent import (
    LEGAL_BASES,
    PUBLISHER_SOURCE,
    PURPOSES,
    STATES,
    ConsentLedger,
    ConsentRecord,
)
from remarket.privacy.tcf import decode_tc_string, tcf_consents
from remarket.privacy.transactions import immediate
from remarket.schema.events import Identify, Message
from remarket.storage.state import identities
from remarket.storage.state.offsets import claim_offset, committed_offset
from remarket.storage.state.published import ANONYMOUS_ID, USER_ID

__all__ = ["ConsentSink", "consents_in"]

_log = logging.getLogger(__name__)
_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
# Searched in the raw JSON without copying it: most events carry no consent at all, and
# the sink sees every event.
_IN_CONTEXT: Final = re.compile(b"consent").search
_IN_TRAITS: Final = re.compile(b'"consent"').search


def _object(raw: msgspec.Raw) -> dict[str, Any]:
    try:
        return _OBJECT.decode(raw)
    except msgspec.DecodeError:
        return {}


def _booleans(values: Any, source: str) -> list[tuple[str, bool, str]]:
    if not isinstance(values, dict):
        return []
    found: list[tuple[str, bool, str]] = []
    for key, value in values.items():
        purpose = str(key).lower()
        if purpose in PURPOSES and isinstance(value, bool):
            found.append((purpose, value, source))
    return found


def consents_in(message: Message) -> list[tuple[str, bool, str]]:
    """``(purpose, granted, source)`` for every consent an event carries.

    >>> import msgspec
    >>> from remarket.schema.events import Identify
    >>> consents_in(Identify(user_id="u1", traits=msgspec.Raw(b'{"consent":{"email":true}}')))
    [('email', True, 'identify')]
    """
    found: list[tuple[str, bool, str]] = []
    if isinstance(message, Identify) and _IN_TRAITS(message.traits) is not None:
        found += _booleans(_object(message.traits).get("consent"), "identify")
    if _IN_CONTEXT(message.context) is None:
        return found
    context = _object(message.context)
    consent = context.get("consent")
    consent = consent if isinstance(consent, dict) else {}
    found += _booleans(consent.get("categoryPreferences"), "context")
    tc_string = consent.get("tcString", context.get("gdpr_consent"))
    if isinstance(tc_string, str) and tc_string:
        try:
            decoded = decode_tc_string(tc_string)
        except ValueError as exc:
            _log.warning("message %s: TC string ignored: %s", message.message_id, exc)
        else:
            found += [(p, granted, "tcf") for p, granted in tcf_consents(decoded).items()]
    return found


_Choice = tuple[str, str, str, str, str]
"""``(purpose, state, source, legal basis, ref)``: a ledger record but its profile and time."""


def _choices(message: Message) -> list[_Choice]:
    """The records an event makes: from the consent it carries, or, for the ledger's own
    published events, the records they copy (``context.consent.ledger``)."""
    if message.source_id != PUBLISHER_SOURCE:
        return [
            (purpose, "granted" if granted else "denied", source, "consent", f"{source}:{mid}")
            for purpose, granted, source in consents_in(message)
            for mid in (message.message_id or "",)
        ]
    consent = _object(message.context).get("consent")
    copied = consent.get("ledger") if isinstance(consent, dict) else None
    fields = ("purpose", "state", "source", "legal_basis", "ref")
    return [
        (item["purpose"], item["state"], item["source"], item["legal_basis"], item["ref"])
        for item in (copied if isinstance(copied, list) else ())
        if isinstance(item, dict)
        and all(isinstance(item.get(f), str) for f in fields)
        and item["purpose"] in PURPOSES
        and item["state"] in STATES
        and item["legal_basis"] in LEGAL_BASES
    ]


class ConsentSink:
    """Applies consent carried by events to the ledger, after the profiles worker.

    Each event is resolved to its profile through the identities the profiles worker
    wrote (user id first, then anonymous id); the offset is fenced like every sink's.
    """

    def __init__(self, ledger: ConsentLedger, name: str = "consent") -> None:
        self.name = name
        self._ledger = ledger
        self._engine = ledger.engine

    def committed(self) -> int:
        with self._engine.connect() as conn:
            return committed_offset(conn, self.name)

    def apply(self, rows: Sequence[tuple[int, Message]], through: int, expected: int) -> None:
        found = [
            (message, choices)
            for _, message in rows
            if (
                _IN_CONTEXT(message.context) is not None
                or (type(message) is Identify and _IN_TRAITS(message.traits) is not None)
            )
            and (choices := _choices(message))
        ]
        with immediate(self._engine) as conn:
            claim_offset(conn, self.name, through, expected)
            if not found:
                return
            wanted = {ident for message, _ in found for ident in self._identifiers(message)}
            owner = dict(
                ((kind, value), pid)
                for kind, value, pid in conn.execute(
                    select(identities.c.kind, identities.c.value, identities.c.profile_id).where(
                        tuple_(identities.c.kind, identities.c.value).in_(sorted(wanted))
                    )
                )
            )
            per_profile: dict[str, list[ConsentRecord]] = defaultdict(list)
            for message, choices in found:
                profile_id = next(
                    (owner[i] for i in self._identifiers(message) if i in owner), None
                )
                if profile_id is None or message.timestamp is None:
                    _log.warning("message %s: no profile for its consent", message.message_id)
                    continue
                per_profile[profile_id] += [
                    ConsentRecord(profile_id, purpose, state, source, basis, message.timestamp, ref)
                    for purpose, state, source, basis, ref in choices
                ]
            for profile_id, records in sorted(per_profile.items()):
                self._ledger.record(conn, profile_id, records)

    @staticmethod
    def _identifiers(message: Message) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if message.user_id is not None:
            found.append((USER_ID, str(message.user_id)))
        if message.anonymous_id is not None:
            found.append((ANONYMOUS_ID, str(message.anonymous_id)))
        return found
