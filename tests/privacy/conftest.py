"""A migrated state store on SQLite and on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine


@pytest.fixture
def engine(state_engine: Engine) -> Engine:
    return state_engine
