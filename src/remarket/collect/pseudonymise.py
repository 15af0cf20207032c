"""Pseudonymisation at collect: truncate or drop IPs, reduce user agents, hash identifiers.

Applied to every event when configured (``pseudonymise_*`` settings), and fully (IP
dropped, user agent reduced, ids hashed, traits emptied) to the events the consent
filter keeps without consent. Identifiers are hashed with a keyed HMAC-SHA256, so the
same id always gives the same pseudonym (profiles still join) but nobody without the
key can recompute it from a known id.
"""

from __future__ import annotations

import hmac
import re
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any, Final, Literal

from remarket.collect.context import edit_context
from remarket.collect.stages import InFlight, Stage
from remarket.config import Settings
from remarket.schema.events import EMPTY_OBJECT, Alias, Group, Identify, Message

__all__ = ["Pseudonymiser", "hash_id", "reduce_user_agent", "truncate_ip"]

IPMode = Literal["keep", "truncate", "drop"]
AgentMode = Literal["keep", "reduce", "drop"]

_VERSION: Final = re.compile(r"/(\d+)[\w.]*")
_COMMENT: Final = re.compile(r"\s*\([^)]*\)")
_FAMILIES: Final = (
    ("android", "Android"),
    ("iphone", "iOS"),
    ("ipad", "iOS"),
    ("cros", "ChromeOS"),
    ("windows", "Windows"),
    ("macintosh", "macOS"),
    ("mac os", "macOS"),
    ("linux", "Linux"),
    # The reduced forms themselves, so that reducing twice changes nothing.
    ("(ios)", "iOS"),
    ("(macos)", "macOS"),
    ("(chromeos)", "ChromeOS"),
)
_CACHE_MAX: Final = 50_000


def truncate_ip(text: str, v4_prefix: int = 24, v6_prefix: int = 48) -> str | None:
    """The address with every bit past the prefix zeroed; None if it is not an address.

    >>> truncate_ip("203.0.113.77"), truncate_ip("2001:db8:abcd:12::1")
    ('203.0.113.0', '2001:db8:abcd::')
    """
    # The C parser and formatter (inet_pton/ntop), not ipaddress objects: this runs per
    # event, and parsing in Python costs more than the rest of the stage.
    text = text.strip()
    family, prefix = (AF_INET6, v6_prefix) if ":" in text else (AF_INET, v4_prefix)
    try:
        packed = inet_pton(family, text)
    except OSError:
        return None
    bits = len(packed) * 8
    mask = ((1 << prefix) - 1) << (bits - prefix)
    return inet_ntop(family, (int.from_bytes(packed) & mask).to_bytes(len(packed)))


def reduce_user_agent(agent: str) -> str:
    """Product tokens with their major version only, the platform as an OS family.

    >>> reduce_user_agent("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    ...                   "(KHTML, like Gecko) Chrome/126.0.6478.127 Safari/537.36")
    'Mozilla/5 (Windows) AppleWebKit/537 Chrome/126 Safari/537'
    """
    lowered = agent.lower()
    family = next((name for token, name in _FAMILIES if token in lowered), "Other")
    # Comments go whole; an unbalanced parenthesis left over goes too.
    bare = _COMMENT.sub("", agent).replace("(", " ").replace(")", " ")
    products = _VERSION.sub(r"/\1", bare).split()
    if not products:
        return f"({family})"
    return " ".join([products[0], f"({family})", *products[1:]])


def hash_id(key: bytes, value: str) -> str:
    """The pseudonym of an id: HMAC-SHA256 under ``key``, hex, 32 characters (128 bits).

    >>> hash_id(b"k", "u-42") == hash_id(b"k", "u-42") != hash_id(b"other", "u-42")
    True
    """
    return hmac.digest(key, value.encode(), "sha256")[:16].hex()


class Pseudonymiser:
    """The pseudonymisation stage, and the full treatment the consent filter asks for."""

    def __init__(self, settings: Settings) -> None:
        self._ip: IPMode = settings.pseudonymise_ip
        self._v4, self._v6 = settings.ip_v4_prefix, settings.ip_v6_prefix
        self._agent: AgentMode = settings.pseudonymise_user_agent
        self._ids = settings.pseudonymise_ids
        secret = settings.pseudonymisation_key
        self._key = secret.get_secret_value().encode() if secret is not None else None
        self._agents: dict[str, str] = {}

    def pseudonym(self, value: str) -> str:
        """An id as stored: hashed when ids are pseudonymised, else unchanged."""
        return hash_id(self._key, value) if self._ids and self._key is not None else value

    def stages(self) -> list[Stage]:
        """Itself, if it changes anything."""
        return [self] if self._ip != "keep" or self._agent != "keep" or self._ids else []

    def __call__(self, batch: InFlight) -> None:
        ip, agent, ids = self._ip, self._agent, self._ids
        for event in batch.events:
            m = event.message
            if ip != "keep" or agent != "keep":
                raw = bytes(m.context)
                if b'"ip"' in raw or b'"userAgent"' in raw:
                    m.context = edit_context(m.context, lambda c: self._context(c, ip, agent))
            if ids:
                self._hash_ids(m)

    def fully(self, m: Message) -> None:
        """Keep only a pseudonym of the event: for a person without consent."""
        m.context = edit_context(m.context, lambda c: self._context(c, "drop", "reduce", True))
        if not self._ids:  # else the stage, which runs first, hashed them already
            self._hash_ids(m)
        if isinstance(m, Identify | Group):
            m.traits = EMPTY_OBJECT

    def _hash_ids(self, m: Message) -> None:
        key = self._key
        if key is None:
            raise ValueError("hashing ids needs pseudonymisation_key")
        if m.user_id is not None:
            m.user_id = hash_id(key, str(m.user_id))
        if m.anonymous_id is not None:
            m.anonymous_id = hash_id(key, str(m.anonymous_id))
        if isinstance(m, Alias):
            m.previous_id = hash_id(key, str(m.previous_id))

    def _context(
        self, context: dict[str, Any], ip: IPMode, agent: AgentMode, traits: bool = False
    ) -> bool:
        changed = False
        if ip != "keep" and "ip" in context:
            value = context.pop("ip")
            kept = truncate_ip(value, self._v4, self._v6) if isinstance(value, str) else None
            if ip == "truncate" and kept is not None:
                context["ip"] = kept
            changed = True
        if agent != "keep" and "userAgent" in context:
            value = context.pop("userAgent")
            if agent == "reduce" and isinstance(value, str):
                context["userAgent"] = self._reduced(value)
            # Client hints name the exact browser build and device model.
            context.pop("userAgentData", None)
            changed = True
        if traits and "traits" in context:
            del context["traits"]
            changed = True
        return changed

    def _reduced(self, agent: str) -> str:
        reduced = self._agents.get(agent)
        if reduced is None:
            if len(self._agents) >= _CACHE_MAX:
                self._agents.clear()
            reduced = self._agents[agent] = reduce_user_agent(agent)
        return reduced
