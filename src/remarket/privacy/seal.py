"""Sealed events: PII fields and identifiers encrypted under the person's key for the log.

A sealed event keeps in the clear what the pipeline needs without the person: type,
messageId (dedupe), timestamps, event name, non-PII properties, and in place of each
identifier its handle (so partitioning by device still holds). The identifiers and the
declared PII fields of ``traits``, ``properties``, ``context`` and ``context.traits``
go into ``sealed``: ``1.<key handle>.<key id>.<base64(nonce | AES-256-GCM ciphertext)>``,
authenticated together with the messageId and key handle (so a sealed blob cannot be
moved onto another event). The key is the one of the event's anonymousId, else its
userId (:mod:`remarket.privacy.keyring`). Once erasure destroys it, the event can be
neither read nor linked to anyone: workers skip it and count it.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgspec
from cryptography.exceptions import InvalidTag

from remarket.metrics import EVENTS_UNREADABLE
from remarket.privacy.keyring import Keyring
from remarket.schema.events import Alias, Group, Identify, Message, Page, Screen, Track

__all__ = ["DEFAULT_PII_FIELDS", "Opener", "Sealer"]

DEFAULT_PII_FIELDS: Final = ("email", "phone", "name", "address", "ip")
_VERSION: Final = "1"
_NONCE: Final = 12
# The identifier kinds of remarket.profiles.identity (a layer above this one).
_ANONYMOUS_ID: Final = "anonymous_id"
_USER_ID: Final = "user_id"
_PREVIOUS_ID: Final = "previous_id"


class _Secret(msgspec.Struct, omit_defaults=True, gc=False):
    """What a sealed event hides: its ids and the PII taken out of each object."""

    a: str | None = None
    u: str | None = None
    p: str | None = None
    t: dict[str, Any] | None = None
    r: dict[str, Any] | None = None
    c: dict[str, Any] | None = None
    ct: dict[str, Any] | None = None


_ENCODER: Final = msgspec.json.Encoder()
_SECRET: Final = msgspec.json.Decoder(_Secret)
_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_ABSENT: Final = msgspec.Raw(b"")


def _aad(message_id: str | None, handle: str) -> bytes:
    return f"{message_id or ''}\x1f{handle}".encode()


class _Fields:
    """The declared PII keys and a cheap test for whether an object may hold one.

    The test is a byte search, then (only on a hit) a decode into a struct of just those
    keys, which skips everything else without building it: ``"name"`` turns up in most
    contexts (``library.name``), so the byte search alone would decode every context.
    """

    def __init__(self, fields: Iterable[str]) -> None:
        self.names = tuple(dict.fromkeys(fields))
        if not self.names or not all(isinstance(f, str) and f for f in self.names):
            raise ValueError("pii_fields must be non-empty field names")
        self._tokens = tuple(f'"{name}"'.encode() for name in self.names)
        spec = [(f"f{i}", msgspec.Raw, _ABSENT) for i in range(len(self.names))]
        rename = {f"f{i}": name for i, name in enumerate(self.names)}
        probe = msgspec.defstruct(
            "_Probe", [*spec, ("traits", msgspec.Raw, _ABSENT)], rename=rename
        )
        self._probe = msgspec.json.Decoder(probe)
        self._count = len(self.names)

    def mentioned(self, data: bytes) -> bool:
        return any(token in data for token in self._tokens)

    def probe(self, raw: msgspec.Raw) -> tuple[bool, msgspec.Raw | None]:
        """(a declared key is at the top level, the raw ``traits`` member)."""
        found = self._probe.decode(raw)
        top = any(len(getattr(found, f"f{i}")) for i in range(self._count))
        traits: msgspec.Raw = found.traits  # type: ignore[attr-defined]
        return top, traits if len(traits) else None

    def take(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        taken = {name: obj.pop(name) for name in self.names if name in obj}
        return taken or None


class Sealer:
    """Seals messages in place for the log (collect, and anything else that appends).

    >>> from remarket.storage.state import connect_state, upgrade_state
    >>> engine = connect_state("sqlite://"); upgrade_state(engine)
    >>> ring = Keyring(engine)
    >>> traits = msgspec.Raw(b'{"email":"a@b.c","plan":"pro"}')
    >>> m = Identify(message_id="m1", user_id="u-42", traits=traits)
    >>> Sealer(ring).seal(m)
    >>> m.user_id.startswith("h_"), bytes(m.traits), m.sealed is not None
    (True, b'{"plan":"pro"}', True)
    >>> ring.flush(); (_, opened), = Opener(ring).open([(1, m)])[0]
    >>> opened.user_id, bytes(opened.traits)
    ('u-42', b'{"plan":"pro","email":"a@b.c"}')
    """

    def __init__(self, keyring: Keyring, fields: Iterable[str] = DEFAULT_PII_FIELDS) -> None:
        self._ring = keyring
        self._fields = _Fields(fields)

    def seal(self, m: Message) -> None:
        if m.sealed is not None:
            raise ValueError("message is sealed already")
        ring = self._ring
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
        if isinstance(m, Alias):
            secret.p = str(m.previous_id)
            m.previous_id = ring.handle(_PREVIOUS_ID, secret.p)
        fields = self._fields
        if isinstance(m, Identify | Group):
            m.traits, secret.t = self._split(m.traits)
        elif isinstance(m, Track | Page | Screen):
            m.properties, secret.r = self._split(m.properties)
        data = bytes(m.context)
        if fields.mentioned(data):
            top, traits = fields.probe(m.context)
            if top or (traits is not None and fields.mentioned(bytes(traits))):
                context = _OBJECT.decode(data)
                secret.c = fields.take(context)
                inner = context.get("traits")
                if isinstance(inner, dict):
                    secret.ct = fields.take(inner)
                if secret.c is not None or secret.ct is not None:
                    m.context = msgspec.Raw(_ENCODER.encode(context))
        key_id, cipher = ring.key_for(key_handle)
        nonce = os.urandom(_NONCE)
        blob = cipher.encrypt(nonce, _ENCODER.encode(secret), _aad(m.message_id, key_handle))
        text = base64.b64encode(nonce + blob).decode()
        m.sealed = f"{_VERSION}.{key_handle}.{key_id}.{text}"

    def _split(self, raw: msgspec.Raw) -> tuple[msgspec.Raw, dict[str, Any] | None]:
        fields = self._fields
        data = bytes(raw)
        if not fields.mentioned(data) or not fields.probe(raw)[0]:
            return raw, None
        obj = _OBJECT.decode(data)
        taken = fields.take(obj)
        return (raw, None) if taken is None else (msgspec.Raw(_ENCODER.encode(obj)), taken)


def _parse(sealed: str) -> tuple[str, str, bytes] | None:
    parts = sealed.split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        return None
    try:
        blob = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return None
    return (parts[1], parts[2], blob) if len(blob) > _NONCE else None


def _merge(raw: msgspec.Raw, taken: dict[str, Any] | None) -> msgspec.Raw:
    if not taken:
        return raw
    obj = _OBJECT.decode(raw)
    obj.update(taken)
    return msgspec.Raw(_ENCODER.encode(obj))


class Opener:
    """Unseals messages read from the log; those whose key is gone are dropped."""

    def __init__(self, keyring: Keyring, *, on_erasure: Sequence[Callable[[], None]] = ()) -> None:
        self._ring = keyring
        self._on_erasure = list(on_erasure)
        self._epoch = keyring.epoch()

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
        parsed: dict[int, tuple[str, str, bytes] | None] = {}
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
                plain = cipher.decrypt(
                    found[2][:_NONCE], found[2][_NONCE:], _aad(m.message_id, found[0])
                )
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
    if isinstance(m, Alias) and secret.p is not None:
        m.previous_id = secret.p
    if isinstance(m, Identify | Group):
        m.traits = _merge(m.traits, secret.t)
    elif isinstance(m, Track | Page | Screen):
        m.properties = _merge(m.properties, secret.r)
    if secret.c is not None or secret.ct is not None:
        context = _OBJECT.decode(m.context)
        context.update(secret.c or {})
        inner = context.get("traits")
        if secret.ct and isinstance(inner, dict):
            inner.update(secret.ct)
        m.context = msgspec.Raw(_ENCODER.encode(context))
    m.sealed = None
