"""Branch conditions: which of some profiles satisfy a segment-DSL condition now, by SQL.

The condition is compiled by the segment SQL compiler (as of ``at``) and restricted to
the profiles asked about, so one query answers a whole batch of profiles at a branch.
The warehouse holds what the workers wrote so far (the warehouse sink runs before the
journeys sink, so an event that woke a profile is in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlglot import exp

from remarket.segments.compile import compile_segment
from remarket.segments.desugar import CoreSegment
from remarket.segments.membership import chunks
from remarket.storage.warehouse import Warehouse

__all__ = ["members_among"]


def members_among(
    warehouse: Warehouse, condition: CoreSegment, profile_ids: Sequence[str], at: datetime
) -> set[str]:
    """The profiles among ``profile_ids`` for which ``condition`` holds at ``at``."""
    if not profile_ids:
        return set()
    sql = compile_segment(condition, at, dialect=warehouse.dialect, scores=False)
    held: set[str] = set()
    for chunk in chunks(sorted(set(profile_ids)), 5000):
        wanted = ", ".join(exp.Literal.string(p).sql(dialect=warehouse.dialect) for p in chunk)
        rows = warehouse.query(
            f"SELECT profile_id FROM ({sql}) AS members WHERE profile_id IN ({wanted})"
        )
        held |= {str(row[0]) for row in rows}
    return held
