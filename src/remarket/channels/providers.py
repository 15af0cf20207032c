"""The one interface every delivery provider implements, and what it is handed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from remarket.channels.templates import Rendered
from remarket.errors import RemarketError

__all__ = ["Envelope", "Provider", "SendFailed", "http_failure"]


class SendFailed(RemarketError):
    """A provider did not take a message. ``permanent``: retrying cannot help (a 4xx
    other than 408/429), so the message goes to the dead letters at once."""

    code = "send_failed"
    status = 502
    title = "Send failed"

    def __init__(self, detail: str, *, permanent: bool = False) -> None:
        super().__init__(detail)
        self.permanent = permanent


def http_failure(status: int, body: str) -> SendFailed:
    """The failure for an HTTP answer that is not 2xx."""
    permanent = 400 <= status < 500 and status not in (408, 409, 425, 429)
    return SendFailed(f"HTTP {status}: {body[:300]}", permanent=permanent)


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message ready to go: the idempotency key names it towards the provider.

    ``to``: the e-mail address, E.164 phone number or push token (empty for webhooks
    and audiences). ``data``: the webhook body, or for audiences ``{"audience":
    external id, "op": "add" | "remove", "email": ..., "phone": ...}`` (an erasure's
    removal: ``"hashed"`` identifiers instead of e-mail and phone).
    """

    key: str
    profile_id: str
    channel: str
    to: str
    content: Rendered | None = None
    data: dict[str, Any] = field(default_factory=dict)
    unsubscribe_url: str | None = None


class Provider(Protocol):
    """Sends envelopes of one channel; raises SendFailed when the provider says no."""

    channel: str

    async def send(self, envelope: Envelope) -> None: ...

    async def aclose(self) -> None: ...
