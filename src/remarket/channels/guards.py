"""The guards every send passes: consent, suppression, caps, limits, quiet hours."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, func, select

from remarket.config import Settings
from remarket.storage.state import channel_outbox, channel_suppressions

__all__ = [
    "MESSAGING",
    "Verdict",
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


def suppressed(conn: Connection, profile_ids: list[str], channel: str) -> bool:
    return (
        conn.scalar(
            select(channel_suppressions.c.profile_id)
            .where(
                channel_suppressions.c.profile_id.in_(profile_ids),
                channel_suppressions.c.channel.in_((channel, "*")),
            )
            .limit(1)
        )
        is not None
    )


def _sent_since(
    conn: Connection, profile_ids: list[str], channel: str | None, since: datetime
) -> int:
    query = select(func.count()).where(
        channel_outbox.c.profile_id.in_(profile_ids),
        channel_outbox.c.finished_at > since,
        channel_outbox.c.status == "sent",
        channel_outbox.c.channel.in_(_CAPPED if channel is None else (channel,)),
    )
    return int(conn.scalar(query) or 0)


def cap_reached(
    conn: Connection, profile_ids: list[str], channel: str, now: datetime, settings: Settings
) -> bool:
    """Whether a frequency cap (per channel or over all channels, per day or per 7 days)
    is already used up for the person."""
    if channel not in _CAPPED:
        return False
    for caps, window in (
        (settings.channels_caps_per_day, timedelta(days=1)),
        (settings.channels_caps_per_week, timedelta(days=7)),
    ):
        for key, scope in ((channel, channel), ("*", None)):
            cap = caps.get(key)
            if cap is not None and _sent_since(conn, profile_ids, scope, now - window) >= cap:
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
