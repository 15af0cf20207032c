"""How a JSON value is read and compared: the rules every engine implements identically.

A property or trait is read as *text*: a JSON string as itself, ``true``/``false``,
a number as its digits, JSON ``null`` or a missing key as no value. The operand's type
decides how the text is parsed:

- string operands compare the text (``eq``, ``neq``, ``in``, ``not_in``, ``contains``,
  ``starts_with``; case-sensitive, by code point);
- number operands parse the text as a decimal number (``NUMBER_RE``; JSON numbers and
  numeric strings alike, so ``"10"`` equals ``10``);
- boolean operands accept the text ``true`` or ``false`` (JSON booleans or strings);
- instants parse ISO-8601 text (``INSTANT_RE``): a date (midnight UTC) or a date-time
  with ``Z`` or a ``+hh:mm`` offset; a date-time without an offset is not an instant,
  since its meaning would depend on a session time zone. Impossible days (Feb 30)
  roll over into the next month, as the same integer arithmetic does in every engine.

A value that does not parse as the operand's type matches no operator (``neq`` and
``not_in`` included: use ``not`` for "anything but"). Only ``exists`` and
``not_exists`` look at a value that is not there. ``between`` includes both ends.
The text of a non-integer JSON number may differ between engines (``2.50`` vs ``2.5``),
so compare numbers with number operands; objects and arrays have no portable text.
"""

from __future__ import annotations

import json
import operator as op
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from remarket.schema.segment import Ago, At, duration_seconds

__all__ = [
    "INSTANT_FORBIDDEN_RE",
    "INSTANT_RE",
    "MICROS",
    "NUMBER_FORBIDDEN_RE",
    "NUMBER_RE",
    "instant_of_text",
    "matches",
    "micros_of",
    "moment_micros",
    "number_of_text",
    "text_at",
    "text_of",
    "to_datetime",
]

MICROS: Final = 1_000_000

# The shape tests use ^...$; Java's $ also matches before a final line terminator, so
# each shape goes with a test that no character outside the allowed set occurs.
NUMBER_RE: Final = (
    "^-?([0-9]{1,255}([.][0-9]{1,255})?|[0-9]{1,20}([.][0-9]{1,255})?[eE][-+]?[0-9]{1,2})$"
)
NUMBER_FORBIDDEN_RE: Final = "[^-+.eE0-9]"
INSTANT_RE: Final = (
    "^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    "(T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,6})?"
    "(Z|[-+]([01][0-9]|2[0-3]):[0-5][0-9]))?$"
)
INSTANT_FORBIDDEN_RE: Final = "[^-+.:TZ0-9]"

_NUMBER: Final = re.compile(NUMBER_RE)
_INSTANT: Final = re.compile(INSTANT_RE)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_DAY_MICROS: Final = 86_400 * MICROS


def micros_of(value: datetime) -> int:
    """Microseconds since the epoch (naive datetimes are UTC).

    >>> micros_of(datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC))
    1000000
    """
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * MICROS + delta.microseconds


def to_datetime(micros: int) -> datetime:
    """The aware UTC datetime of epoch microseconds."""
    return _EPOCH + timedelta(microseconds=micros)


def moment_micros(moment: At | Ago, at: int) -> int:
    """An absolute or relative (T - ago) instant as epoch microseconds."""
    if isinstance(moment, At):
        return micros_of(moment.at)
    return at - duration_seconds(moment.ago) * MICROS


def text_of(value: object) -> str | None:
    """The text of a decoded JSON value (None for null)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def text_at(obj: Mapping[str, object], path: Sequence[str]) -> str | None:
    """The text at a dotted path (already split) of a decoded JSON object."""
    current: object = obj
    for key in path:
        # Decoded JSON objects are dicts: the Mapping check (an ABC) is the slow path.
        if type(current) is not dict and not isinstance(current, Mapping):
            return None
        current = current.get(key)
    return text_of(current)


def number_of_text(text: str) -> float | None:
    """The number a text spells, or None.

    >>> number_of_text("1.5e3"), number_of_text("1,5")
    (1500.0, None)
    """
    return float(text) if _NUMBER.fullmatch(text) else None


def _days_from_civil(year: int, month: int, day: int) -> int:
    # Howard Hinnant's algorithm; years >= 1000 keep every quotient non-negative, so
    # integer division truncates the same way in Python and in each SQL dialect.
    y = year - (1 if month <= 2 else 0)
    shifted = (month + 9) % 12
    day_of_year = (153 * shifted + 2) // 5 + day - 1
    return 365 * y + y // 4 - y // 100 + y // 400 + day_of_year - 719468


def instant_of_text(text: str) -> int | None:
    """The epoch microseconds an ISO-8601 text spells, or None.

    >>> instant_of_text("1970-01-02T01:00:00+01:00") == 86_400 * MICROS
    True
    """
    if not _INSTANT.fullmatch(text):
        return None
    micros = _days_from_civil(int(text[0:4]), int(text[5:7]), int(text[8:10])) * _DAY_MICROS
    if len(text) == 10:
        return micros
    zone = 1 if text.endswith("Z") else 6
    clock = int(text[11:13]) * 3600 + int(text[14:16]) * 60 + int(text[17:19])
    fraction = text[20 : len(text) - zone] if text[19] == "." else "0"
    micros += clock * MICROS + int(fraction.ljust(6, "0"))
    if zone == 6:
        offset = (int(text[-5:-3]) * 60 + int(text[-2:])) * 60 * MICROS
        micros -= offset if text[-6] == "+" else -offset
    return micros


def _boolean(text: str) -> bool | None:
    return {"true": True, "false": False}.get(text)


def matches(operator: str, operand: object, text: str | None, at: int) -> bool:
    """Whether a value's text satisfies ``operator operand`` at evaluation time ``at``.

    >>> matches("gt", 5, "10", 0), matches("eq", True, "true", 0), matches("neq", 1, None, 0)
    (True, True, False)
    """
    if operator == "exists":
        return text is not None
    if operator == "not_exists":
        return text is None
    if text is None:
        return False
    if operator == "within_last":
        instant = instant_of_text(text)
        span = duration_seconds(str(operand)) * MICROS
        return instant is not None and at - span < instant <= at
    sample = operand[0] if isinstance(operand, list) else operand
    if isinstance(sample, bool):
        value: object = _boolean(text)
        operand_value: object = operand
    elif isinstance(sample, int | float):
        value = number_of_text(text)
        operand_value = [float(v) for v in operand] if isinstance(operand, list) else operand
    elif isinstance(sample, At | Ago):
        value = instant_of_text(text)
        operand_value = (
            [moment_micros(m, at) for m in operand]
            if isinstance(operand, list)
            else moment_micros(operand, at)  # type: ignore[arg-type]
        )
    else:
        value, operand_value = text, operand
    if value is None:
        return False
    return _compare(operator, value, operand_value)


_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "gt": op.gt,
    "gte": op.ge,
    "lt": op.lt,
    "lte": op.le,
    "eq": op.eq,
    "neq": op.ne,
}


def compare_number(operator: str, value: float, operand: float | tuple[float, float]) -> bool:
    """A number against a number operator's operand (``between`` takes both ends).

    >>> compare_number("between", 2.0, (1.0, 2.0))
    True
    """
    return _compare(operator, value, operand)


def _compare(operator: str, value: Any, operand: Any) -> bool:
    if operator == "in":
        return bool(value in operand)
    if operator == "not_in":
        return bool(value not in operand)
    if operator == "contains":
        return bool(operand in value)
    if operator == "starts_with":
        return bool(value.startswith(operand))
    if operator == "between":
        low, high = operand
        return bool(low <= value <= high)
    return _ORDER[operator](value, operand)
