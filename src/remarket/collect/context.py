"""Reading and rewriting fields of an event's raw ``context`` JSON on the ingest path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import msgspec

__all__ = ["context_string", "edit_context"]

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_ENCODER: Final = msgspec.json.Encoder()
_TOKENS: dict[str, tuple[bytes, bytes]] = {}


def context_string(context: bytes, name: str) -> str | None:
    """The string value of top-level key ``name`` of a context object, or None.

    Byte searches only, no JSON decode and no regular expression (whose character
    loop costs more than the rest of the stage): it runs per event. A value with
    escapes, or a key seen nested first, takes the slow path (a full decode).

    >>> context_string(b'{"ip": "203.0.113.9", "library": {}}', "ip")
    '203.0.113.9'
    >>> context_string(b'{"device": {"ip": "x"}}', "ip") is None
    True
    """
    tokens = _TOKENS.get(name)
    if tokens is None:
        tokens = _TOKENS[name] = (f'"{name}":'.encode(), f'"{name}"'.encode())
    token = tokens[0]
    at = context.find(token)
    if at < 0:
        if tokens[1] not in context:
            return None
    else:
        # Compact JSON, or one space after the colon: what encoders write.
        start = at + len(token)
        if context[start : start + 1] == b" ":
            start += 1
        if context[start : start + 1] == b'"' and context.find(b"{", 1, at) < 0:  # top level
            close = context.find(b'"', start + 1)
            if close > 0 and context.find(b"\\", start, close) < 0:
                return context[start + 1 : close].decode("utf-8", "replace")
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
