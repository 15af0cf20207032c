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
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
_KEY_CACHE: Final = 1_000_000
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


_Key = tuple[str, bytes, bytes, AESGCM]
"""A sealing key as :class:`Sealer` keeps it: the handle, the blob's header (version,
handle, key id), the tail of the authenticated data (separator and handle), the cipher."""


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
        # The keys of the identifiers met so far, by identifier (kind: anonymous_id, then
        # user_id): one lookup per event instead of a handle, a key and a header. Dropped
        # whenever the keyring drops keys (its generation grows: an erasure).
        self._keys: tuple[dict[str, _Key], dict[str, _Key]] = ({}, {})
        self._generation = keyring.generation

    def seal(self, m: Message) -> None:
        """Seal one message (see :meth:`seal_all`)."""
        self.seal_all((m,))

    def seal_all(self, messages: Sequence[Message]) -> None:
        """Seal these messages in place; each needs an anonymousId or a userId.

        A key that an erasure destroys while the batch is being sealed may still seal the
        rest of it: those events, of the person being erased, are then unreadable.
        """
        ring = self._ring
        generation = ring.generation
        if generation != self._generation:
            for keys in self._keys:
                keys.clear()
            self._generation = generation
        by_anonymous, by_user = self._keys
        handle = ring.handle
        mentions = self._mentions
        encode = _ENCODER.encode
        nonce_at = ring.nonces(len(messages))
        for m in messages:
            if m.sealed is not None:
                raise ValueError("message is sealed already")
            anonymous, user = m.anonymous_id, m.user_id
            a = u = p = None
            if anonymous is not None:
                a = str(anonymous)
                key = by_anonymous.get(a) or self._key(_ANONYMOUS_ID, a)
                if user is not None:
                    u = str(user)
                    m.user_id = handle(_USER_ID, u)
            elif user is not None:
                u = str(user)
                key = by_user.get(u) or self._key(_USER_ID, u)
            else:
                raise ValueError("a message needs anonymousId or userId to be sealed")
            key_handle, header, aad_tail, cipher = key
            if a is not None:
                m.anonymous_id = key_handle
            else:
                m.user_id = key_handle
            t = r = c = _ABSENT
            kind = type(m)
            if kind is Alias:
                p = str(m.previous_id)  # type: ignore[union-attr]
                m.previous_id = handle(_PREVIOUS_ID, p)  # type: ignore[union-attr]
            elif kind is Identify or kind is Group:
                if mentions(m.traits) is not None:  # type: ignore[union-attr]
                    t, m.traits = m.traits, EMPTY_OBJECT  # type: ignore[union-attr]
            elif mentions(m.properties) is not None:  # type: ignore[union-attr]
                r, m.properties = m.properties, EMPTY_OBJECT  # type: ignore[union-attr]
            if mentions(m.context) is not None:
                c, m.context = m.context, EMPTY_OBJECT
            nonce = nonce_at.to_bytes(_NONCE, "big")
            nonce_at += 1
            aad = (m.message_id or "").encode() + aad_tail
            m.sealed = (
                header + nonce + cipher.encrypt(nonce, encode(_Secret(a, u, p, t, r, c)), aad)
            )

    def _key(self, kind: str, value: str) -> _Key:
        """The key to seal the events of this identifier under (made on first sight)."""
        key_handle = self._ring.handle(kind, value)
        key_id, cipher = self._ring.key_for(key_handle)
        header = _VERSION + bytes.fromhex(key_handle[_PREFIX:]) + bytes.fromhex(key_id)
        key = (key_handle, header, _aad("", key_handle), cipher)
        keys = self._keys[kind == _USER_ID]
        if len(keys) >= _KEY_CACHE:
            keys.clear()
        keys[value] = key
        return key


def _header(sealed: bytes) -> bytes | None:
    """The key's handle and id as a blob names them (24 bytes), or None if this is no
    sealed blob."""
    if len(sealed) <= _HEADER + _NONCE or sealed[:1] != _VERSION:
        return None
    return sealed[1:_HEADER]


def _pair(header: bytes) -> tuple[str, str]:
    """(key handle, key id) of a blob's header."""
    return HANDLE_PREFIX + header[:_HANDLE_BYTES].hex(), header[_HANDLE_BYTES:].hex()


class Opener:
    """Unseals messages read from the log; those whose key is gone are dropped."""

    def __init__(
        self,
        keyring: Keyring,
        *,
        on_erasure: Sequence[Callable[[], None]] = (),
        indexes: bool = True,
    ) -> None:
        self._ring = keyring
        self._on_erasure = list(on_erasure)
        # Whether this worker fills the handle index (one worker process of several is
        # enough: they would take turns at the key file to enter the same keys).
        self._indexes = indexes
        # Unknown until the first batch: keys cached before this opener existed are
        # dropped then, whatever was erased meanwhile.
        self._epoch: tuple[int, str] | None = None
        # The cipher and the tail of the authenticated data of each key met so far, by
        # the blob header naming it: one slice and one lookup per event. Dropped whenever
        # the keyring drops keys (its generation grows: an erasure).
        self._keys: dict[bytes, tuple[AESGCM, bytes]] = {}
        self._generation = keyring.generation

    def __call__(self, rows: Sequence[tuple[int, Message]]) -> list[tuple[int, Message]]:
        """For a worker, per batch: look for erasures first (any process's); after one,
        drop cached keys and call ``on_erasure`` (caches of the stores that the worker
        fills, e.g. identity mappings); enter the keys made since the last batch into the
        handle index (bulk work kept off the collect path) unless another worker does;
        then open."""
        if self._indexes:
            self._ring.index_pending()
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
        # Each blob's header once: it finds the keys to look up, then each event's key.
        headers = [_header(m.sealed) if m.sealed is not None else None for _, m in rows]
        keys = self._ciphers(headers)
        kept: list[tuple[int, Message]] = []
        dropped = 0
        for row, header in zip(rows, headers, strict=True):
            m = row[1]
            sealed = m.sealed
            if sealed is None:
                kept.append(row)
                continue
            key = keys.get(header) if header is not None else None
            if key is None:
                dropped += 1
                continue
            cipher, aad_tail = key
            try:
                plain = cipher.decrypt(
                    sealed[_HEADER : _HEADER + _NONCE],
                    sealed[_HEADER + _NONCE :],
                    (m.message_id or "").encode() + aad_tail,
                )
                secret = _SECRET.decode(plain)
            except (InvalidTag, msgspec.MsgspecError):
                dropped += 1
                continue
            _restore(m, secret)
            kept.append(row)
        return kept, dropped

    def _ciphers(self, headers: Sequence[bytes | None]) -> dict[bytes, tuple[AESGCM, bytes]]:
        """The cache of keys, holding every existing key these blob headers name."""
        ring = self._ring
        if ring.generation != self._generation:
            self._keys.clear()
            self._generation = ring.generation
        keys = self._keys
        missing = {header for header in headers if header is not None and header not in keys}
        if missing:
            if len(keys) + len(missing) > _KEY_CACHE:
                keys.clear()
            pairs = {_pair(header): header for header in missing}
            for pair, cipher in ring.lookup(set(pairs)).items():
                keys[pairs[pair]] = (cipher, _aad("", pair[0]))
        return keys


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
