"""Branch conditions: which of some profiles satisfy a segment-DSL condition now, by SQL.

The condition is compiled by the segment SQL compiler (as of ``at``) and restricted to
the profiles asked about, so one query answers a whole batch of profiles at a branch.
The warehouse holds what the workers wrote so far (the warehouse sink runs before the
journeys sink, so an event that woke a profile is in it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Final

from remarket.segments.compile import compile_segment
from remarket.segments.desugar import CoreSegment
from remarket.segments.membership import chunks
from remarket.storage.warehouse import Warehouse

__all__ = ["members_among"]

# Profile ids are generated (``p_<hex>``); checked, they need no quoting beyond '...'.
_PROFILE_ID: Final = re.compile(r"[A-Za-z0-9_:.-]{1,64}")


def members_among(
    warehouse: Warehouse, condition: CoreSegment, profile_ids: Sequence[str], at: datetime
) -> set[str]:
    """The profiles among ``profile_ids`` for which ``condition`` holds at ``at``."""
    if not profile_ids:
        return set()
    bad = next((p for p in profile_ids if not _PROFILE_ID.fullmatch(p)), None)
    if bad is not None:
        raise ValueError(f"profile ids are letters, digits and _-:. only, got {bad!r}")
    sql = compile_segment(condition, at, dialect=warehouse.dialect, scores=False)
    held: set[str] = set()
    for chunk in chunks(sorted(set(profile_ids)), 5000):
        wanted = ", ".join(f"'{p}'" for p in chunk)
        rows = warehouse.query(
            f"SELECT profile_id FROM ({sql}) AS members WHERE profile_id IN ({wanted})"
        )
        held |= {str(row[0]) for row in rows}
    return held
