"""Parquet exports of the warehouse (``events.parquet``, ``identities.parquet``): erasure.

An export is a snapshot another engine (Spark) reads; erasing a person rewrites each file
without their rows, through a temporary file renamed over the old one, so a reader never
sees a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import duckdb

__all__ = ["erase_parquet", "parquet_residue"]

_WHERE: Final = {
    "events": "list_contains($ids, anonymous_id) OR list_contains($ids, user_id) "
    "OR list_contains($ids, previous_id)",
    "identities": "list_contains($pids, profile_id) OR list_contains($ids, value)",
}


def _literal(path: Path) -> str:
    # COPY and read_parquet take no parameter for a file name: quote it as a literal.
    return "'" + str(path).replace("'", "''") + "'"


def _files(folder: Path) -> list[tuple[Path, str]]:
    return [
        (folder / f"{t}.parquet", w)
        for t, w in _WHERE.items()
        if (folder / f"{t}.parquet").exists()
    ]


def _params(where: str, ids: Sequence[str], profile_ids: Sequence[str]) -> dict[str, Any]:
    # DuckDB refuses named parameters that the statement does not use.
    given = {"ids": list(ids), "pids": list(profile_ids)}
    return {name: value for name, value in given.items() if f"${name}" in where}


def parquet_residue(folder: Path, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
    """Rows of the person in the exports in ``folder``."""
    total = 0
    with duckdb.connect() as db:
        for path, where in _files(folder):
            row = db.execute(
                f"SELECT count(*) FROM read_parquet({_literal(path)}) WHERE {where}",
                _params(where, ids, profile_ids),
            ).fetchone()
            total += int(row[0]) if row else 0
    return total


def erase_parquet(folder: Path, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
    """Rewrite the exports in ``folder`` without the person's rows; how many went."""
    removed = 0
    with duckdb.connect() as db:
        for path, where in _files(folder):
            params = _params(where, ids, profile_ids)
            row = db.execute(
                f"SELECT count(*) FROM read_parquet({_literal(path)}) WHERE {where}", params
            ).fetchone()
            found = int(row[0]) if row else 0
            if not found:
                continue
            temporary = path.with_suffix(".parquet.tmp")
            db.execute(
                f"COPY (SELECT * FROM read_parquet({_literal(path)}) "
                f"WHERE NOT coalesce({where}, false)) TO {_literal(temporary)} (FORMAT parquet)",
                params,
            )
            os.replace(temporary, path)
            removed += found
    return removed
