"""The guards every send passes: consent, suppression, caps, limits, quiet hours."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, func, or_, select

from remarket.channels.audiences import e164
from remarket.config import Settings
from remarket.storage.state import channel_outbox, channel_suppressions

__all__ = [
    "MESSAGING",
    "Verdict",
    "address_of",
    "cap_reached",
    "journey_sent_today",
    "purpose_of",
    "quiet_until",
    "suppressed",
    "zone_of",
]

MESSAGING: Final = frozenset({"email", "sms", "push"})
"""Channels that reach a person directly: quiet hours apply to them."""

_PURPOSES: Final = {"email": "email", "sms": "sms", "push": "push", "audience": "advertising"}
_CAPPED: Final = frozenset({"email", "sms", "push", "webhook"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the guards decided: send, skip (recorded with ``reason``, final) or defer
    (try again at ``until``, recorded with ``reason``)."""

    action: Literal["send", "skip", "defer"]
    reason: str | None = None
    until: datetime | None = None


SEND: Final = Verdict("send")


def purpose_of(channel: str, settings: Settings) -> str:
    """The consent purpose a send on ``channel`` needs."""
    return _PURPOSES.get(channel, settings.channels_webhook_purpose)


def zone_of(traits: Mapping[str, object], default: str) -> ZoneInfo:
    """The profile's ``timezone`` trait, or ``default`` if absent or not an IANA name."""
    name = traits.get("timezone")
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(default)


def quiet_until(now: datetime, zone: ZoneInfo, hours: tuple[int, int] | None) -> datetime | None:
    """When quiet hours ``[start, end)`` (local, may wrap midnight) end, if ``now`` is
    inside them; None otherwise.

    >>> berlin = ZoneInfo("Europe/Berlin")
    >>> quiet_until(datetime(2026, 1, 1, 22, tzinfo=UTC), berlin, (21, 8)).isoformat()
    '2026-01-02T07:00:00+00:00'
    >>> quiet_until(datetime(2026, 1, 1, 12, tzinfo=UTC), berlin, (21, 8)) is None
    True
    """
    if hours is None or hours[0] == hours[1]:
        return None
    start, end = hours
    local = now.astimezone(zone)
    inside = start <= local.hour < end if start < end else (local.hour >= start or local.hour < end)
    if not inside:
        return None
    day = local.date() if local.hour < end else local.date() + timedelta(days=1)
    # Built from the wall time, so the end is right across a DST change.
    return datetime(day.year, day.month, day.day, end, tzinfo=zone).astimezone(UTC)


def address_of(
    channel: str, traits: Mapping[str, object], variables: Mapping[str, object], country_code: str
) -> str | None:
    """Where a message on ``channel`` goes: the e-mail address, the E.164 phone number, the
    push token (the message's own, else the profile's); ``""`` for webhooks (they go to
    the provider's URL); None when the profile has none.

    >>> address_of("sms", {"phone": "(650) 555-1212"}, {}, "1"), address_of("email", {}, {}, "1")
    ('+16505551212', None)
    """
    if channel == "email":
        email = traits.get("email")
        return email.strip() if isinstance(email, str) and "@" in email else None
    if channel == "sms":
        phone = traits.get("phone")
        return e164(phone, country_code) if isinstance(phone, str) else None
    if channel == "push":
        token = variables.get("token") or traits.get("push_token")
        return token if isinstance(token, str) and token else None
    return ""


def suppressed(
    conn: Connection, profile_ids: list[str], channel: str, *, at: datetime | None = None
) -> bool:
    """Whether ``channel`` is suppressed for the person (as of ``at``, if given)."""
    query = select(channel_suppressions.c.profile_id).where(
        channel_suppressions.c.profile_id.in_(profile_ids),
        channel_suppressions.c.channel.in_((channel, "*")),
    )
    if at is not None:
        query = query.where(channel_suppressions.c.created_at <= at)
    return conn.scalar(query.limit(1)) is not None


def _sent_between(
    conn: Connection,
    profile_ids: list[str],
    channel: str | None,
    since: datetime,
    until: datetime,
    exclude_journey: str | None,
) -> int:
    c = channel_outbox.c
    query = select(func.count()).where(
        c.profile_id.in_(profile_ids),
        c.finished_at > since,
        c.finished_at <= until,
        c.status == "sent",
        c.channel.in_(_CAPPED if channel is None else (channel,)),
    )
    if exclude_journey is not None:
        query = query.where(or_(c.journey_id.is_(None), c.journey_id != exclude_journey))
    return int(conn.scalar(query) or 0)


def cap_reached(
    conn: Connection,
    profile_ids: list[str],
    channel: str,
    now: datetime,
    settings: Settings,
    *,
    also: Sequence[tuple[str, datetime]] = (),
    exclude_journey: str | None = None,
) -> bool:
    """Whether a frequency cap (per channel or over all channels, per day or per 7 days)
    is already used up for the person at ``now``.

    ``also``: sends the outbox does not hold that count too, as ``(channel, at)`` (a dry
    run's own); ``exclude_journey``: a journey whose sends in the outbox do not count (a
    dry run of it stands in for them).
    """
    if channel not in _CAPPED:
        return False
    for caps, window in (
        (settings.channels_caps_per_day, timedelta(days=1)),
        (settings.channels_caps_per_week, timedelta(days=7)),
    ):
        since = now - window
        for key, scope in ((channel, channel), ("*", None)):
            cap = caps.get(key)
            if cap is None:
                continue
            extra = sum(
                since < at <= now and (c == scope if scope is not None else c in _CAPPED)
                for c, at in also
            )
            sent = _sent_between(conn, profile_ids, scope, since, now, exclude_journey)
            if sent + extra >= cap:
                return True
    return False


def journey_sent_today(conn: Connection, journey_id: str, now: datetime) -> int:
    """Messages a journey sent since midnight UTC."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(
        conn.scalar(
            select(func.count()).where(
                channel_outbox.c.journey_id == journey_id,
                channel_outbox.c.status == "sent",
                channel_outbox.c.finished_at >= midnight,
            )
        )
        or 0
    )
