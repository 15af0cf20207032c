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
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Final

import msgspec
from sqlalchemy import select, tuple_

from remarket.privacy.consent import PURPOSES, ConsentLedger, ConsentRecord
from remarket.privacy.tcf import decode_tc_string, tcf_consents
from remarket.privacy.transactions import immediate
from remarket.schema.events import Identify, Message
from remarket.storage.state import identities
from remarket.storage.state.offsets import claim_offset, committed_offset

__all__ = ["ConsentSink", "consents_in"]

_log = logging.getLogger(__name__)
_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
# The identity kinds the profiles worker writes (remarket.profiles.identity, a layer up).
_ANONYMOUS_ID: Final = "anonymous_id"
_USER_ID: Final = "user_id"


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
    if isinstance(message, Identify) and b'"consent"' in bytes(message.traits):
        found += _booleans(_object(message.traits).get("consent"), "identify")
    raw = bytes(message.context)
    if b"consent" not in raw:
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
        found = [(message, consents) for _, message in rows if (consents := consents_in(message))]
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
            for message, consents in found:
                profile_id = next(
                    (owner[i] for i in self._identifiers(message) if i in owner), None
                )
                if profile_id is None or message.timestamp is None:
                    _log.warning("message %s: no profile for its consent", message.message_id)
                    continue
                for purpose, granted, source in consents:
                    per_profile[profile_id].append(
                        ConsentRecord(
                            profile_id,
                            purpose,
                            "granted" if granted else "denied",
                            source,
                            "consent",
                            message.timestamp,
                            f"{source}:{message.message_id or ''}",
                        )
                    )
            for profile_id, records in sorted(per_profile.items()):
                self._ledger.record(conn, profile_id, records)

    @staticmethod
    def _identifiers(message: Message) -> list[tuple[str, str]]:
        found: list[tuple[str, str]] = []
        if message.user_id is not None:
            found.append((_USER_ID, str(message.user_id)))
        if message.anonymous_id is not None:
            found.append((_ANONYMOUS_ID, str(message.anonymous_id)))
        return found
