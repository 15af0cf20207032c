"""IAB TCF v2.2 consent strings: decode the core segment, map its purposes to remarket's.

Written by hand rather than taken from a library: only the core segment's first 176
bits are needed (up to PurposesConsent), the Python TCF packages are unmaintained, and
the format is fixed by the IAB's "TCF v2 Consent string and vendor list formats" spec.

Core segment fields, in order (bits): Version 6, Created 36, LastUpdated 36, CmpId 12,
CmpVersion 12, ConsentScreen 6, ConsentLanguage 12, VendorListVersion 12,
TcfPolicyVersion 6, IsServiceSpecific 1, UseNonStandardTexts 1, SpecialFeatureOptIns 12,
PurposesConsent 24. Segments are base64url without padding, joined by ``.``; the core
segment comes first. Times count deciseconds since the Unix epoch.

How TCF purposes map to remarket purposes (:data:`TCF_PURPOSES`): a remarket purpose
is granted when the string consents to purpose 1 (store and/or access information on a
device, which every use here needs) and to every TCF purpose listed for it; else denied.

============== ======================================================================
remarket       TCF v2.2 purposes
============== ======================================================================
advertising    1, 3 (create profiles for personalised ads), 4 (use them to select ads)
personalization 1, 5 (create profiles to personalise content), 6 (use them)
analytics      1, 7 (measure ad performance), 8 (measure content performance),
               9 (understand audiences through statistics), 10 (develop and improve)
============== ======================================================================

``email``, ``sms`` and ``push`` are not TCF purposes: a TC string leaves them as they are.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

__all__ = ["CORE_BITS", "TCF_PURPOSES", "TCString", "decode_tc_string", "tcf_consents"]

CORE_BITS: Final = 176
"""Bits of the core segment up to and including PurposesConsent."""

_FIELDS: Final = (
    ("version", 6),
    ("created", 36),
    ("last_updated", 36),
    ("cmp_id", 12),
    ("cmp_version", 12),
    ("consent_screen", 6),
    ("consent_language", 12),
    ("vendor_list_version", 12),
    ("policy_version", 6),
    ("service_specific", 1),
    ("use_non_standard_texts", 1),
    ("special_feature_opt_ins", 12),
    ("purposes_consent", 24),
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_LENGTH: Final = 10_000

TCF_PURPOSES: Final[dict[str, frozenset[int]]] = {
    "advertising": frozenset({1, 3, 4}),
    "personalization": frozenset({1, 5, 6}),
    "analytics": frozenset({1, 7, 8, 9, 10}),
}
"""The TCF purposes each remarket purpose needs (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class TCString:
    """The core segment of a TC string, up to PurposesConsent.

    >>> tc = decode_tc_string("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA")
    >>> tc.cmp_id, tc.consent_language, sorted(tc.purposes_consent)
    (675, 'EN', [2, 10])
    """

    version: int
    created: datetime
    last_updated: datetime
    cmp_id: int
    cmp_version: int
    consent_screen: int
    consent_language: str
    vendor_list_version: int
    policy_version: int
    service_specific: bool
    use_non_standard_texts: bool
    special_feature_opt_ins: frozenset[int]
    purposes_consent: frozenset[int]


def _bitset(value: int, width: int) -> frozenset[int]:
    # Bit 1 of the field (the first, most significant) is purpose/feature 1.
    return frozenset(i + 1 for i in range(width) if value >> (width - 1 - i) & 1)


def _letters(value: int) -> str:
    first, second = value >> 6, value & 0x3F
    if first > 25 or second > 25:
        raise ValueError("a TC string's ConsentLanguage must be two letters A-Z")
    return chr(ord("A") + first) + chr(ord("A") + second)


def decode_tc_string(text: str) -> TCString:
    """Decode the core segment of a TCF v2 consent string; ValueError names the rule broken.

    >>> decode_tc_string("BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA").version
    Traceback (most recent call last):
    ...
    ValueError: a TC string must have version 2 (TCF v2), got version 1
    """
    if not isinstance(text, str) or not text:
        raise ValueError("a TC string must be a non-empty string")
    if len(text) > _MAX_LENGTH:
        raise ValueError(f"a TC string must be at most {_MAX_LENGTH} characters")
    core = text.split(".", 1)[0].strip()
    try:
        raw = base64.urlsafe_b64decode(core + "=" * (-len(core) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("a TC string's segments must be base64url") from exc
    if len(raw) * 8 < 6:
        raise ValueError("a TC string's core segment is empty")
    bits = int.from_bytes(raw, "big")
    total = len(raw) * 8
    version = bits >> (total - 6)
    if version != 2:
        raise ValueError(f"a TC string must have version 2 (TCF v2), got version {version}")
    if total < CORE_BITS:
        raise ValueError(f"a TC string's core segment must hold at least {CORE_BITS} bits")
    values: dict[str, int] = {}
    position = 0
    for name, width in _FIELDS:
        values[name] = bits >> (total - position - width) & ((1 << width) - 1)
        position += width
    return TCString(
        version=version,
        created=_EPOCH + timedelta(milliseconds=100 * values["created"]),
        last_updated=_EPOCH + timedelta(milliseconds=100 * values["last_updated"]),
        cmp_id=values["cmp_id"],
        cmp_version=values["cmp_version"],
        consent_screen=values["consent_screen"],
        consent_language=_letters(values["consent_language"]),
        vendor_list_version=values["vendor_list_version"],
        policy_version=values["policy_version"],
        service_specific=bool(values["service_specific"]),
        use_non_standard_texts=bool(values["use_non_standard_texts"]),
        special_feature_opt_ins=_bitset(values["special_feature_opt_ins"], 12),
        purposes_consent=_bitset(values["purposes_consent"], 24),
    )


def tcf_consents(tc: TCString) -> dict[str, bool]:
    """Each TCF-covered remarket purpose: granted (True) or denied (False).

    >>> tcf_consents(decode_tc_string("COtybn4PA_zT4KjACBENAPCIAEBAAECAAIAAAAAAAAAA"))
    {'advertising': False, 'personalization': False, 'analytics': False}
    """
    return {purpose: needed <= tc.purposes_consent for purpose, needed in TCF_PURPOSES.items()}
