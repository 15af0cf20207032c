"""Sealed events: PII fields and identifiers encrypted under the person's key for the log.

A sealed event keeps in the clear what the pipeline needs without the person: type,
messageId (dedupe), timestamps, event name, the objects that name no PII field, and in
place of each identifier its handle (so partitioning by device still holds). The
identifiers, and each of ``traits``, ``properties`` and ``context`` that names a declared
PII field anywhere in it (``context.ip``, ``context.traits.email``, ``properties.name``…),
go whole into ``sealed`` (bytes, base64 in JSON): version 1, the key's handle (16 bytes)
and id (8 bytes), the nonce (12 bytes) and the AES-256-GCM ciphertext,
authenticated together with the messageId and key handle (so a sealed blob cannot be
moved onto another event). The key is the one of the event's anonymousId, else its
userId (:mod:`remarket.privacy.keyring`). Once erasure destroys it, the event can be
neither read nor linked to anyone: workers skip it and count it.

Whole objects rather than single fields: finding a field is one byte search, while
taking it out and putting it back means parsing and re-encoding the object, which costs
more than the encryption itself on the ingest and worker hot paths. A field name that
only occurs nested (``context.library.name``) seals the object too: more is hidden, never
less.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import msgspec
from cryptography.exceptions import InvalidTag

from remarket.metrics import EVENTS_UNREADABLE
from remarket.privacy.keyring import HANDLE_PREFIX, Keyring
from remarket.schema.events import EMPTY_OBJECT, Alias, Group, Identify, Message

__all__ = ["DEFAULT_PII_FIELDS", "Opener", "Sealer"]

DEFAULT_PII_FIELDS: Final = ("email", "phone", "name", "address", "ip")
_VERSION: Final = b"\x01"
_NONCE: Final = 12
_PREFIX: Final = len(HANDLE_PREFIX)
_HANDLE_BYTES: Final = 16
_HEADER: Final = 1 + _HANDLE_BYTES + 8
_HEADER_CACHE: Final = 1_000_000
# The identifier kinds of remarket.profiles.identity (a layer above this one).
_ANONYMOUS_ID: Final = "anonymous_id"
_USER_ID: Final = "user_id"
_PREVIOUS_ID: Final = "previous_id"
_ABSENT: Final = msgspec.Raw(b"")


class _Secret(msgspec.Struct, omit_defaults=True, gc=False):
    """What a sealed event hides: its ids and, whole, the objects that name PII."""

    a: str | None = None
    u: str | None = None
    p: str | None = None
    t: msgspec.Raw = _ABSENT
    r: msgspec.Raw = _ABSENT
    c: msgspec.Raw = _ABSENT


_ENCODER: Final = msgspec.json.Encoder()
_SECRET: Final = msgspec.json.Decoder(_Secret)


def _aad(message_id: str | None, handle: str) -> bytes:
    return f"{message_id or ''}\x1f{handle}".encode()


class Sealer:
    """Seals messages in place for the log (collect, and anything else that appends).

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> ring = Keyring(engine)
    >>> traits = msgspec.Raw(b'{"email":"a@b.c","plan":"pro"}')
    >>> m = Identify(message_id="m1", user_id="u-42", traits=traits)
    >>> Sealer(ring).seal(m)
    >>> m.user_id.startswith("h_"), bytes(m.traits), m.sealed is not None
    (True, b'{}', True)
    >>> ring.flush(); (_, opened), = Opener(ring).open([(1, m)])[0]
    >>> opened.user_id, bytes(opened.traits)
    ('u-42', b'{"email":"a@b.c","plan":"pro"}')
    """

    def __init__(self, keyring: Keyring, fields: Iterable[str] = DEFAULT_PII_FIELDS) -> None:
        names = tuple(dict.fromkeys(fields))
        if not names or not all(isinstance(f, str) and f for f in names):
            raise ValueError("pii_fields must be non-empty field names")
        self._ring = keyring
        # One search for any of the names as a JSON key (or string: rare, and sealing
        # too much is safe).
        self._mentions = re.compile(
            b'"(?:' + b"|".join(re.escape(json.dumps(n)[1:-1].encode()) for n in names) + b')"'
        ).search
        self._headers: dict[tuple[str, str], bytes] = {}

    def seal(self, m: Message) -> None:
        if m.sealed is not None:
            raise ValueError("message is sealed already")
        ring = self._ring
        mentions = self._mentions
        secret = _Secret()
        key_handle = ""
        if m.anonymous_id is not None:
            secret.a = str(m.anonymous_id)
            m.anonymous_id = key_handle = ring.handle(_ANONYMOUS_ID, secret.a)
        if m.user_id is not None:
            secret.u = str(m.user_id)
            m.user_id = ring.handle(_USER_ID, secret.u)
            key_handle = key_handle or m.user_id
        if not key_handle:
            raise ValueError("a message needs anonymousId or userId to be sealed")
        kind = type(m)
        if kind is Alias:
            secret.p = str(m.previous_id)  # type: ignore[union-attr]
            m.previous_id = ring.handle(_PREVIOUS_ID, secret.p)  # type: ignore[union-attr]
        elif kind is Identify or kind is Group:
            if mentions(m.traits) is not None:  # type: ignore[union-attr]
                secret.t, m.traits = m.traits, EMPTY_OBJECT  # type: ignore[union-attr]
        elif mentions(m.properties) is not None:  # type: ignore[union-attr]
            secret.r, m.properties = m.properties, EMPTY_OBJECT  # type: ignore[union-attr]
        if mentions(m.context) is not None:
            secret.c, m.context = m.context, EMPTY_OBJECT
        key_id, cipher = ring.key_for(key_handle)
        nonce = ring.nonce()
        blob = cipher.encrypt(nonce, _ENCODER.encode(secret), _aad(m.message_id, key_handle))
        header = self._headers.get((key_handle, key_id))
        if header is None:
            header = _VERSION + bytes.fromhex(key_handle[_PREFIX:]) + bytes.fromhex(key_id)
            if len(self._headers) >= _HEADER_CACHE:
                self._headers.clear()
            self._headers[(key_handle, key_id)] = header
        m.sealed = header + nonce + blob


def _parse(sealed: bytes) -> tuple[str, str, bytes, bytes] | None:
    """(key handle, key id, nonce, ciphertext), or None if this is no sealed blob."""
    if len(sealed) <= _HEADER + _NONCE or sealed[:1] != _VERSION:
        return None
    handle = HANDLE_PREFIX + sealed[1 : 1 + _HANDLE_BYTES].hex()
    key_id = sealed[1 + _HANDLE_BYTES : _HEADER].hex()
    return handle, key_id, sealed[_HEADER : _HEADER + _NONCE], sealed[_HEADER + _NONCE :]


class Opener:
    """Unseals messages read from the log; those whose key is gone are dropped."""

    def __init__(self, keyring: Keyring, *, on_erasure: Sequence[Callable[[], None]] = ()) -> None:
        self._ring = keyring
        self._on_erasure = list(on_erasure)
        # Unknown until the first batch: keys cached before this opener existed are
        # dropped then, whatever was erased meanwhile.
        self._epoch: tuple[int, str] | None = None

    def __call__(self, rows: Sequence[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """For a worker, per batch: look for erasures first (any process's); after one,
        drop cached keys and call ``on_erasure`` (caches of the stores that the worker
        fills, e.g. identity mappings), then open."""
        epoch = self._ring.epoch()
        if epoch != self._epoch:
            self._epoch = epoch
            self._ring.forget_all()
            for callback in self._on_erasure:
                callback()
        kept, dropped = self.open(rows)
        if dropped:
            EVENTS_UNREADABLE.inc(dropped)
        return kept

    def open(self, rows: Sequence[tuple[int, Message]]) -> tuple[list[tuple[int, Message]], int]:
        """The rows with sealed messages opened in place, and how many could not be.

        Messages that were never sealed pass through unchanged.
        """
        parsed: dict[int, tuple[str, str, bytes, bytes] | None] = {}
        for index, (_, m) in enumerate(rows):
            if m.sealed is not None:
                parsed[index] = _parse(m.sealed)
        if not parsed:
            return list(rows), 0
        ciphers = self._ring.lookup({(p[0], p[1]) for p in parsed.values() if p is not None})
        kept: list[tuple[int, Message]] = []
        dropped = 0
        for index, row in enumerate(rows):
            if index not in parsed:
                kept.append(row)
                continue
            found = parsed[index]
            cipher = ciphers.get((found[0], found[1])) if found is not None else None
            if found is None or cipher is None:
                dropped += 1
                continue
            m = row[1]
            try:
                plain = cipher.decrypt(found[2], found[3], _aad(m.message_id, found[0]))
                secret = _SECRET.decode(plain)
            except (InvalidTag, msgspec.MsgspecError):
                dropped += 1
                continue
            _restore(m, secret)
            kept.append(row)
        return kept, dropped


def _restore(m: Message, secret: _Secret) -> None:
    m.anonymous_id = secret.a
    m.user_id = secret.u
    kind = type(m)
    if kind is Alias:
        if secret.p is not None:
            m.previous_id = secret.p  # type: ignore[union-attr]
    elif kind is Identify or kind is Group:
        if secret.t:
            m.traits = secret.t  # type: ignore[union-attr]
    elif secret.r:
        m.properties = secret.r  # type: ignore[union-attr]
    if secret.c:
        m.context = secret.c
    m.sealed = None
