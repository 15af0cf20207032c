"""Everything a running server holds: stores, log, collector and workers."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from sqlalchemy import Engine

from remarket.api.keys import ApiKeyStore
from remarket.api.lockout import Lockout
from remarket.api.passwords import Passwords
from remarket.api.sessions import SessionStore
from remarket.api.users import UserStore
from remarket.channels.removals import AudienceRemovals
from remarket.clock import Clock, SystemClock
from remarket.collect import Collector, QuarantineStore, SourceRegistry
from remarket.collect.protection import Protection
from remarket.collect.seal import SealPII
from remarket.config import Settings
from remarket.privacy.erasers import compact_after_erasures
from remarket.privacy.keyring import Keyring
from remarket.privacy.rights import Rights, build_rights
from remarket.privacy.seal import Sealer
from remarket.profiles import ProfileStore
from remarket.storage.log import EventLog, open_log
from remarket.storage.log.owner import LogOwner
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.warehouse import Warehouse, open_warehouse
from remarket.workers import WorkerProcess, WorkerThread

__all__ = ["Runtime", "WorkersMode"]

WorkersMode = Literal["process", "thread", "none"]
"""Where a server's workers run: a child process, a thread of the API process, or
elsewhere (`remarket worker`)."""

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class Runtime:
    """The server's long-lived objects, built on start-up and closed on shutdown."""

    settings: Settings
    clock: Clock
    engine: Engine
    log: EventLog
    warehouse: Warehouse
    collector: Collector
    sources: SourceRegistry
    keys: ApiKeyStore
    quarantine: QuarantineStore
    profiles: ProfileStore
    workers: WorkerThread | WorkerProcess | None
    keyring: Keyring
    rights: Rights
    protection: Protection
    users: UserStore
    sessions: SessionStore
    owner: LogOwner | None
    """The embedded log's lock: one server collects into it (None with NATS)."""

    @classmethod
    async def start(
        cls, settings: Settings, *, clock: Clock | None = None, workers: WorkersMode = "thread"
    ) -> Runtime:
        if workers == "process" and clock is not None:
            raise ValueError(
                "a worker process keeps its own time: use workers='thread' with a clock"
            )
        # First: a second server on the same embedded log is refused before it starts
        # anything (its messageId memory would not see this one's events).
        owner = LogOwner.of(settings)
        try:
            return await cls._start(settings, clock or SystemClock(), workers, owner)
        except BaseException:
            if owner is not None:
                owner.release()
            raise

    @classmethod
    async def _start(
        cls, settings: Settings, clock: Clock, workers: WorkersMode, owner: LogOwner | None
    ) -> Runtime:
        engine = connect_state(settings.resolved_database_url())
        upgrade_state(engine)
        log = await open_log(settings)
        process = WorkerProcess(settings) if workers == "process" else None
        # The child takes its own copy of the settings and serves the warehouse to us.
        if process is not None:
            warehouse = process.start()  # which compacts it (run_workers)
        else:
            warehouse = open_warehouse(settings)
            compact_after_erasures(engine, warehouse)
        quarantine = QuarantineStore(engine, clock=clock)
        keyring = Keyring(engine, clock=clock, sync_commits=settings.log_fsync == "full")
        sealer = Sealer(keyring, settings.pii_fields) if settings.pii_encryption else None
        seal = SealPII(sealer, keyring)
        protection = Protection.build(settings, engine, clock)
        # Sealing last: it encrypts what the guard, pseudonymisation and consent kept.
        collector = Collector(
            settings,
            log,
            quarantine,
            clock,
            extra_stages=[*protection.stages, seal],
            barriers=[seal.durable],
        )
        warmed = await collector.warm_up(settings.dedupe_capacity)
        _log.info("remembered %d recent messageIds from the log", warmed)
        # Everything built so far (modules, the dedupe memory) lives as long as the
        # server: keep it out of the collector's full passes, which otherwise walk
        # millions of objects on the ingest path.
        gc.collect()
        gc.freeze()
        thread = (
            WorkerThread(settings, engine, warehouse, clock, keyring)
            if workers == "thread"
            else None
        )
        if thread is not None:
            thread.start()
        protection.start()
        passwords = Passwords.of(settings)
        users = UserStore(engine, passwords, clock=clock)
        lockout = Lockout(
            engine,
            clock=clock,
            max_failures=settings.login_max_failures,
            window=timedelta(seconds=settings.login_failure_window_s),
        )
        rights = build_rights(settings, engine, warehouse, keyring, clock)
        # Erasure queues the person's removal from the ad audiences they were uploaded to.
        rights.erasers.inform(AudienceRemovals(engine))
        return cls(
            settings=settings,
            clock=clock,
            engine=engine,
            log=log,
            warehouse=warehouse,
            collector=collector,
            sources=SourceRegistry(engine, clock=clock),
            keys=ApiKeyStore(engine, clock=clock),
            quarantine=quarantine,
            profiles=ProfileStore(engine),
            workers=process or thread,
            keyring=keyring,
            rights=rights,
            protection=protection,
            users=users,
            sessions=SessionStore(
                engine,
                users,
                passwords,
                clock=clock,
                idle_timeout=timedelta(seconds=settings.session_idle_timeout_s),
                max_age=timedelta(seconds=settings.session_max_age_s),
                lockout=lockout,
            ),
            owner=owner,
        )

    async def stop(self) -> None:
        gc.unfreeze()  # let shutdown free what start-up froze
        await self.protection.close()
        if self.workers is not None:
            self.workers.stop()
        await self.log.close()
        self.warehouse.close()
        self.engine.dispose()
        if self.owner is not None:
            self.owner.release()
