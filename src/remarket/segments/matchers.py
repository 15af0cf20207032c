"""What segments read of an event (:class:`EventView`), and the tests that pick the events
a leaf reads (:class:`Matcher`, shared between segments through a :class:`MatcherPool`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgspec

from remarket.schema.events import Alias, Group, Identify, Message, Page, Screen, Track
from remarket.schema.segment import AbsoluteWindow, PropertyFilter, RelativeWindow
from remarket.segments.values import matches, micros_of, text_at

__all__ = ["EventTest", "EventView", "Matcher", "MatcherPool", "view_of"]

EventTest = Callable[["EventView"], bool]
"""Whether an event passes a leaf's event name, filters and fixed window."""

_OBJECT: Final = msgspec.json.Decoder(dict[str, Any])
_TYPE_NAMES: Final[dict[type, str]] = {
    Track: "track",
    Identify: "identify",
    Page: "page",
    Screen: "screen",
    Group: "group",
    Alias: "alias",
}


@dataclass(frozen=True, slots=True)
class EventView:
    """The fields of one event the evaluator reads, decoded once for every segment."""

    type: str
    event: str | None
    at: int
    message_id: str
    properties: Mapping[str, Any]
    traits: Mapping[str, Any]


def view_of(message: Message) -> EventView:
    """Decode what segments need from a stored message (its timestamp must be set)."""
    if message.timestamp is None:
        raise ValueError("a stored event has a timestamp; this one has none")
    properties: Mapping[str, Any] = {}
    traits: Mapping[str, Any] = {}
    event = None
    if isinstance(message, Track):
        event = message.event
        properties = _OBJECT.decode(message.properties)
    elif isinstance(message, Identify):
        traits = _OBJECT.decode(message.traits)
    return EventView(
        type=_TYPE_NAMES[type(message)],
        event=event,
        at=micros_of(message.timestamp),
        message_id=message.message_id or "",
        properties=properties,
        traits=traits,
    )


class Matcher:
    """Whether an event is a track of one name, inside a fixed window, passing filters.

    Built once per leaf (or once per :class:`MatcherPool`): paths split and window bounds
    converted ahead of the events. It remembers its answer for the last event it was
    asked about, so segments sharing it through a pool test each event once.
    """

    __slots__ = ("end", "filters", "last", "name", "start")

    def __init__(
        self,
        name: str,
        where: Iterable[PropertyFilter],
        window: RelativeWindow | AbsoluteWindow | None = None,
    ) -> None:
        self.name = name
        self.filters = [(f.operator, f.value, f.path.split(".")) for f in where]
        self.start = self.end = None
        if isinstance(window, AbsoluteWindow):
            self.start, self.end = micros_of(window.start), micros_of(window.end)
        # (event, answer), replaced in one assignment: safe to read from another thread.
        self.last: tuple[EventView | None, bool] = (None, False)

    def __call__(self, ev: EventView) -> bool:
        seen, answer = self.last
        if seen is ev:
            return answer
        answer = self._test(ev)
        self.last = (ev, answer)
        return answer

    def _test(self, ev: EventView) -> bool:
        if ev.type != "track" or ev.event != self.name:
            return False
        if self.start is not None and not self.start < ev.at <= self.end:  # type: ignore[operator]
            return False
        properties = ev.properties
        return all(
            matches(operator, value, text_at(properties, path), 0)
            for operator, value, path in self.filters
        )


class MatcherPool:
    """Event matchers shared by the segments built with one pool.

    Many segments test the same event the same way (e.g. every ``Product Viewed``
    without filters); built with a pool they share one matcher per distinct (event,
    filters, fixed window), which tests each event once.
    """

    def __init__(self) -> None:
        self._matchers: dict[tuple[str, tuple[str, ...], str | None], Matcher] = {}

    def get(
        self,
        name: str,
        where: Iterable[PropertyFilter],
        window: RelativeWindow | AbsoluteWindow | None = None,
    ) -> Matcher:
        where = list(where)
        fixed = window.model_dump_json() if isinstance(window, AbsoluteWindow) else None
        key = (name, tuple(f.model_dump_json() for f in where), fixed)
        found = self._matchers.get(key)
        if found is None:
            found = self._matchers[key] = Matcher(name, where, window)
        return found
