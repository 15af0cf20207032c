"""Run the workers in a child process of ``remarket serve``, so ingest keeps its own core.

One Python process has one GIL: with the workers in a thread, every event's warehouse,
profile and segment work competes with the HTTP path for the same core. The child is
started by the API process with a spec file (the parent's exact settings and a fresh key),
owns the DuckDB warehouse and answers the API's warehouse calls over a Unix socket
(:mod:`remarket.storage.warehouse.remote`). It stops when the parent stops it (SIGTERM) or
dies (the kernel sends it SIGTERM: ``PR_SET_PDEATHSIG``), so a killed server never leaves
an orphan holding the warehouse file.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Final

from pydantic import SecretStr

from remarket.config import Settings
from remarket.errors import StorageError
from remarket.privacy.erasers import compact_after_erasures
from remarket.storage.state import connect_state
from remarket.storage.warehouse import Warehouse, open_warehouse
from remarket.storage.warehouse.remote import RemoteWarehouse, WarehouseServer
from remarket.workers.service import WorkerPart, build_workers

__all__ = ["WorkerProcess", "check_part", "run_worker_process", "run_workers"]

_log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG: Final = 1
_SOCKET: Final = "warehouse.sock"
_SPEC: Final = "spec.json"
_SERVE_WITHIN_S: Final = 600.0
_OWNER_GONE_WITHIN_S: Final = 60.0
_SERVING_SWITCH_S: Final = 0.0005


def _plain(settings: Settings) -> dict[str, Any]:
    """The settings as JSON values, secrets revealed (the spec file is private to us)."""
    values: dict[str, Any] = {}
    for name, value in settings:
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        values[name] = str(value) if isinstance(value, Path) else value
    return values


def _owns_warehouse(settings: Settings) -> bool:
    """Whether the warehouse allows one opener only (DuckDB), so the child must serve it."""
    return settings.resolved_warehouse_url().startswith("duckdb:")


class WorkerProcess:
    """The child process running the workers (two with ``worker_split``: the warehouse's
    part, which serves the warehouse, then the people's part, which uses it); ``start``
    returns the API's warehouse."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._dir = Path(tempfile.mkdtemp(prefix="remarket-"))  # mode 0700
        self._processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> Warehouse:
        """Start the child (from the calling thread: the parent-death signal is bound to
        it) and wait until it serves the warehouse; then the people's part, if split."""
        authkey = secrets.token_bytes(32)
        split = self._settings.worker_split
        owner = self._spawn("events" if split else "all", authkey)
        if _owns_warehouse(self._settings):
            try:
                # Before it serves, the child may compact the warehouse after an erasure
                # (about a second per million events): wait for it while it lives.
                warehouse: Warehouse = RemoteWarehouse(
                    str(self._dir / _SOCKET),
                    authkey,
                    timeout=_SERVE_WITHIN_S,
                    owner_alive=lambda: owner.poll() is None,
                )
            except StorageError:
                self.stop()
                raise
        else:
            warehouse = open_warehouse(self._settings)
        if split:
            self._spawn("people", authkey)
        return warehouse

    @property
    def pids(self) -> list[int]:
        """The children's process ids (the warehouse's owner first)."""
        return [process.pid for process in self._processes]

    def _spawn(self, part: WorkerPart, authkey: bytes) -> subprocess.Popen[bytes]:
        spec = self._dir / f"{part}-{_SPEC}"
        spec.write_text(
            json.dumps(
                {
                    "settings": _plain(self._settings),
                    "authkey": authkey.hex(),
                    "ppid": os.getpid(),
                    "part": part,
                    "socket": str(self._dir / _SOCKET),
                }
            )
        )
        spec.chmod(0o600)
        process = subprocess.Popen(
            [sys.executable, "-m", "remarket.cli", "worker", "--spec", str(spec)]
        )
        self._processes.append(process)
        return process

    def stop(self, timeout: float = 30.0) -> None:
        # The people's part first: it uses the warehouse that the other one serves.
        for process in reversed(self._processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


def _die_with_parent(ppid: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != ppid:  # the parent died before the signal was armed
        sys.exit(0)


def check_part(settings: Settings, part: WorkerPart) -> None:
    """Refuse to run the people's part on a warehouse it cannot open beside the other's."""
    if part == "people" and _owns_warehouse(settings):
        raise ValueError(
            "the people's part of the workers needs a warehouse that several processes can "
            "open (PostgreSQL: REMARKET_WAREHOUSE_URL); with the embedded DuckDB file, "
            "set REMARKET_WORKER_SPLIT=true and run `remarket serve`"
        )


def run_workers(
    settings: Settings,
    *,
    serve: tuple[str, bytes] | None = None,
    part: WorkerPart = "all",
    remote: tuple[str, bytes] | None = None,
) -> None:
    """Run the workers (of one ``part``) until SIGTERM or Ctrl+C; with ``serve`` (socket
    address, key), also answer other processes' warehouse calls; with ``remote``, use the
    warehouse that another process serves there instead of opening it."""
    if remote is None:
        check_part(settings, part)
    stop = threading.Event()

    def on_sigterm(*_: object) -> None:
        _log.info("workers (%s) stopping: SIGTERM", part)
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    engine = connect_state(settings.resolved_database_url())
    warehouse: Warehouse
    if remote is not None:
        warehouse = RemoteWarehouse(*remote, timeout=_OWNER_GONE_WITHIN_S)
    else:
        # The workers of a server that was killed close the warehouse on their own, a
        # moment later: a new server started at once waits for them.
        warehouse = open_warehouse(settings, lock_wait_s=_OWNER_GONE_WITHIN_S)
    if part != "people":
        compact_after_erasures(engine, warehouse)
    server = WarehouseServer(warehouse, *serve) if serve is not None else None
    if server is not None:
        server.start()
        if part == "events":
            # The people's part waits for each identity copy it sends here; with the
            # default 5 ms switch interval, the thread answering it waited that long for
            # the GIL at every step (socket, DuckDB) behind the warehouse sink.
            sys.setswitchinterval(_SERVING_SWITCH_S)

    async def run() -> None:
        workers = await build_workers(settings, engine, warehouse, part=part)
        # What start-up built (modules, engines, caches) lives as long as the process:
        # keep it out of the collector's full passes, which otherwise walk it again and
        # again while batches allocate (a tenth of the workers' time, measured).
        gc.collect()
        gc.freeze()
        try:
            await workers.run(stop)
        finally:
            await workers.log.close()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        stop.set()
    finally:
        gc.unfreeze()  # so that what start-up built is finalised at exit, as usual
        if server is not None:
            server.close()
        warehouse.close()
        engine.dispose()
        _log.info("workers (%s) stopped", part)


def run_worker_process(spec_path: Path) -> None:
    """The main of a child that :class:`WorkerProcess` starts."""
    spec = json.loads(spec_path.read_text())
    spec_path.unlink()  # it holds secrets: read once
    _die_with_parent(int(spec["ppid"]))
    settings = Settings.model_validate(spec["settings"])
    part: WorkerPart = spec["part"]
    address = (str(spec["socket"]), bytes.fromhex(spec["authkey"]))
    if not _owns_warehouse(settings):
        run_workers(settings, part=part)
    elif part == "people":
        run_workers(settings, part=part, remote=address)
    else:
        run_workers(settings, part=part, serve=address)
