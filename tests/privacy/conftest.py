"""A migrated state store on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from remarket.storage.state import connect_state, upgrade_state


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        plain: str = request.getfixturevalue("pg_database")
        url = plain.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = connect_state(url)
    upgrade_state(engine)
    yield engine
    engine.dispose()
