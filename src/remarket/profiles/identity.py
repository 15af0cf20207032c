"""Identity resolution rules: which identifiers an event links, and profile ids.

A profile is a connected component of identifiers (anonymous id, user id, hashed
e-mail) linked by the events that carry them together. Its id is the smallest of its
identifiers' own ids, so it depends only on the component, never on event order:
the same events in any order give the same profiles.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

import msgspec

from remarket.schema.events import Alias, Identify, Message
from remarket.storage.state.published import ANONYMOUS_ID, USER_ID

__all__ = [
    "ANONYMOUS_ID",
    "EMAIL",
    "USER_ID",
    "Identifier",
    "IdentityGraph",
    "email_hash",
    "identifiers_for_value",
    "identifiers_of",
    "profile_id_of",
]

EMAIL: Final = "email"

Identifier = tuple[str, str]
"""``(kind, value)``; for e-mail the value is :func:`email_hash` of the address."""

_TRAITS = msgspec.json.Decoder(dict[str, object])


def email_hash(address: str) -> str:
    """SHA-256 of the trimmed, lower-cased address (the form ad platforms match on too).

    >>> email_hash(" Ann@Example.com ") == email_hash("ann@example.com")
    True
    """
    return hashlib.sha256(address.strip().lower().encode()).hexdigest()


def profile_id_of(identifier: Identifier) -> str:
    """The id a profile made of this identifier alone would have.

    >>> profile_id_of(("user_id", "42")).startswith("p_")
    True
    """
    kind, value = identifier
    digest = hashlib.blake2b(f"{kind}\x1f{value}".encode(), digest_size=10).hexdigest()
    return f"p_{digest}"


def identifiers_of(message: Message) -> list[Identifier]:
    """Every identifier an event carries; all of them belong to one person.

    An alias's ``previousId`` may have been an anonymous id or an earlier user id, so
    it is linked under both kinds: which one it was would depend on event order.
    """
    found: list[Identifier] = []
    if message.anonymous_id is not None:
        found.append((ANONYMOUS_ID, str(message.anonymous_id)))
    if message.user_id is not None:
        found.append((USER_ID, str(message.user_id)))
    if isinstance(message, Alias):
        previous = str(message.previous_id)
        found.append((ANONYMOUS_ID, previous))
        found.append((USER_ID, previous))
    elif isinstance(message, Identify):
        email = _email_trait(message.traits)
        if email is not None:
            found.append((EMAIL, email_hash(email)))
    return found


def identifiers_for_value(value: str) -> list[Identifier]:
    """Every identifier a raw value could be: an anonymous or user id, or an e-mail.

    >>> [kind for kind, _ in identifiers_for_value("ann@example.com")]
    ['anonymous_id', 'user_id', 'email']
    """
    found: list[Identifier] = [(ANONYMOUS_ID, value), (USER_ID, value)]
    if "@" in value:
        found.append((EMAIL, email_hash(value)))
    return found


def _email_trait(raw: msgspec.Raw) -> str | None:
    if b'"email"' not in bytes(raw):
        return None
    try:
        traits = _TRAITS.decode(raw)
    except msgspec.DecodeError:
        return None
    email = traits.get("email")
    return email if isinstance(email, str) and email.strip() else None


class IdentityGraph:
    """An in-memory identity graph (union-find), the reference the stores must match.

    >>> g = IdentityGraph()
    >>> g.link([("anonymous_id", "a1"), ("user_id", "u1")])
    >>> g.link([("anonymous_id", "a2"), ("user_id", "u1")])
    >>> g.profile_of(("anonymous_id", "a1")) == g.profile_of(("anonymous_id", "a2"))
    True
    """

    def __init__(self) -> None:
        self._parent: dict[Identifier, Identifier] = {}
        self._root_id: dict[Identifier, str] = {}

    def _find(self, node: Identifier) -> Identifier:
        parent = self._parent.setdefault(node, node)
        if parent == node:
            self._root_id.setdefault(node, profile_id_of(node))
            return node
        root = self._find(parent)
        self._parent[node] = root
        return root

    def link(self, identifiers: Iterable[Identifier]) -> None:
        """Put these identifiers in one profile (merging profiles if needed)."""
        roots = {self._find(i) for i in identifiers}
        if len(roots) <= 1:
            return
        keep = min(roots, key=lambda r: self._root_id[r])
        for root in roots - {keep}:
            self._parent[root] = keep
            del self._root_id[root]

    def profile_of(self, identifier: Identifier) -> str:
        """The profile id of the component holding ``identifier``."""
        return self._root_id[self._find(identifier)]

    def identifiers(self) -> list[Identifier]:
        return list(self._parent)
