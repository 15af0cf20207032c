"""Identity resolution, traits and per-profile facts."""

from __future__ import annotations

from remarket.profiles.identity import (
    ANONYMOUS_ID,
    EMAIL,
    USER_ID,
    Identifier,
    IdentityGraph,
    email_hash,
    identifiers_for_value,
    identifiers_of,
    profile_id_of,
)
from remarket.profiles.store import ProfileStore, ProfileView

__all__ = [
    "ANONYMOUS_ID",
    "EMAIL",
    "USER_ID",
    "Identifier",
    "IdentityGraph",
    "ProfileStore",
    "ProfileView",
    "email_hash",
    "identifiers_for_value",
    "identifiers_of",
    "profile_id_of",
]
