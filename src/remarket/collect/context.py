"""Reading and rewriting fields of an event's raw ``context`` JSON on the ingest path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

__all__ = ["context_string", "edit_context"]

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_ENCODER: Final = msgspec.json.Encoder()
_SPACE: Final = b" \t\r\n"


def context_string(context: bytes, name: str) -> str | None:
    """The string value of top-level key ``name`` of a context object, or None.

    A byte search, no JSON decode: it runs per event. Values with escapes, and a key
    seen nested before the top-level one, take the slow path (a full decode).

    >>> context_string(b'{"ip": "203.0.113.9", "library": {}}', "ip")
    '203.0.113.9'
    >>> context_string(b'{"device": {"ip": "x"}}', "ip") is None
    True
    """
    token = f'"{name}"'.encode()
    at = context.find(token)
    if at < 0:
        return None
    if context.count(b"{", 0, at) == 1:  # top level (no object opened before the key)
        end = at + len(token)
        while end < len(context) and context[end] in _SPACE:
            end += 1
        if end < len(context) and context[end] == ord(":"):
            end += 1
            while end < len(context) and context[end] in _SPACE:
                end += 1
            if end < len(context) and context[end] == ord('"'):
                close = context.find(b'"', end + 1)
                if close > 0 and b"\\" not in context[end + 1 : close]:
                    return context[end + 1 : close].decode("utf-8", "replace")
            else:
                return None  # a number, null, an object: not a string
    try:
        value = _OBJECT.decode(context).get(name)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, str) else None


def edit_context(context: msgspec.Raw, edit: Callable[[dict[str, Any]], bool]) -> msgspec.Raw:
    """``context`` after ``edit`` changed its decoded object in place (it returns whether
    it changed anything: if not, the raw bytes are kept as they are)."""
    try:
        value = _OBJECT.decode(context)
    except msgspec.DecodeError:
        return context
    return msgspec.Raw(_ENCODER.encode(value)) if edit(value) else context
