"""Quiet hours, as a property: the deferral ends at the first local instant outside the
quiet window, in the profile's zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from remarket.channels.guards import quiet_until

ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]


def _quiet(at: datetime, zone: ZoneInfo, hours: tuple[int, int]) -> bool:
    start, end = hours
    hour = at.astimezone(zone).hour
    return start <= hour < end if start < end else (hour >= start or hour < end)


@settings(max_examples=300, deadline=None)
@given(
    now=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1), timezones=st.just(UTC)
    ),
    zone=st.sampled_from(ZONES).map(ZoneInfo),
    hours=st.tuples(st.integers(0, 23), st.integers(0, 23)).filter(lambda h: h[0] != h[1]),
)
def test_deferral_ends_when_quiet_hours_end(
    now: datetime, zone: ZoneInfo, hours: tuple[int, int]
) -> None:
    until = quiet_until(now, zone, hours)
    if not _quiet(now, zone, hours):
        assert until is None
        return
    assert until is not None
    assert now < until <= now + timedelta(hours=25)
    assert not _quiet(until, zone, hours)
    # Every whole minute before it is still quiet: the deferral is no longer than needed.
    step = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while step < until:
        assert _quiet(step, zone, hours), step
        step += timedelta(minutes=37)
