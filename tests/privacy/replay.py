"""A whole event log replayed into empty stores, as a rebuild after a disaster would."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import Engine, select

from remarket.config import Settings
from remarket.privacy.keyring import Keyring
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.state.keystore import key_store
from remarket.storage.state.tables import pii_keys, privacy_secrets
from remarket.storage.warehouse import DuckDBWarehouse
from remarket.workers import build_workers


def replay_log(
    settings: Settings, live_state: Engine, folder: Path
) -> tuple[Engine, DuckDBWarehouse]:
    """``settings``' log into a new state store under ``folder`` and an in-memory warehouse,
    through the workers' sinks. The keys are carried over (the keyring is what survives)."""
    folder.mkdir(parents=True, exist_ok=True)
    engine = connect_state(f"sqlite:///{folder / 'state.db'}")
    upgrade_state(engine)
    for table, source_engine, target_engine in (
        (privacy_secrets, live_state, engine),
        (pii_keys, key_store(live_state), key_store(engine)),
    ):
        with source_engine.connect() as source, target_engine.begin() as target:
            rows = [dict(r._mapping) for r in source.execute(select(table))]
            if rows:
                target.execute(table.insert(), rows)
    warehouse = DuckDBWarehouse(None)
    replay_settings = settings.model_copy(
        update={"log_url": SecretStr(settings.resolved_log_url())}
    )

    async def run() -> None:
        workers = await build_workers(replay_settings, engine, warehouse, keyring=Keyring(engine))
        try:
            await workers.runner.drain()
        finally:
            await workers.log.close()

    asyncio.run(run())
    return engine, warehouse
