"""Workers in two parts on the scale-out stores (PostgreSQL state and warehouse): the
warehouse's part and the people's part, as two `remarket worker --part` processes would
run them, leave every event in the warehouse once and the identity copy complete."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from remarket.config import Settings
from remarket.storage.state import connect_state, identities, profiles, upgrade_state
from remarket.storage.warehouse import open_warehouse
from remarket.workers import build_workers, check_part
from tests.workers.test_runner import fill_log


def test_the_people_part_needs_a_warehouse_both_parts_can_open(tmp_path: Path) -> None:
    embedded = Settings(data_dir=tmp_path)
    with pytest.raises(ValueError, match="PostgreSQL"):
        check_part(embedded, "people")
    check_part(embedded, "events")
    check_part(embedded, "all")


@pytest.mark.postgres
def test_two_parts_on_postgresql_fill_the_warehouse_and_profiles_once(
    tmp_path: Path, pg_database: str
) -> None:
    log = fill_log(tmp_path, visitors=120)
    end = asyncio.run(log.end_offset())
    settings = Settings(
        data_dir=tmp_path,
        database_url=SecretStr(pg_database.replace("postgresql://", "postgresql+psycopg://")),
        warehouse_url=SecretStr(pg_database),
        log_url=SecretStr(f"sqlite:///{tmp_path / 'log.db'}"),
        worker_batch_size=500,
        worker_poll_interval_s=0.01,
    )
    check_part(settings, "people")
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    # Each part with its own connections, as in its own process.
    stores = [(connect_state(settings.resolved_database_url()), open_warehouse(settings))]
    stores.append((connect_state(settings.resolved_database_url()), open_warehouse(settings)))

    async def run() -> None:
        events = await build_workers(settings, *stores[0], part="events")
        people = await build_workers(settings, *stores[1], part="people")
        try:
            # The people's part waits for the warehouse's: without it, it would wait for ever.
            await asyncio.wait_for(
                asyncio.gather(events.runner.drain(), people.runner.drain()), timeout=120
            )
        finally:
            await events.log.close()
            await people.log.close()

    asyncio.run(run())
    warehouse = stores[0][1]
    assert warehouse.count_events() == end
    assert warehouse.committed("warehouse") == end
    with engine.connect() as conn:
        counted = sum(r.event_count for r in conn.execute(select(profiles)).all())
        mapped = sorted(tuple(r) for r in conn.execute(select(identities)).all())
    assert counted == end
    copied = warehouse.query("SELECT kind, value, profile_id FROM identities ORDER BY 1, 2")
    assert sorted(tuple(r) for r in copied) == mapped
    for state, opened in stores:
        opened.close()
        state.dispose()
    engine.dispose()
