"""A warehouse owned by another process of the same server, reached over a local socket.

A DuckDB file has one opener. When ``remarket serve`` runs its workers in their own
process (so that ingest and the workers each get a core), that process owns the file and
answers the API's warehouse calls (a profile's events, segment previews) through a
:class:`WarehouseServer`; the API holds a :class:`RemoteWarehouse` with the same interface.
The socket is a Unix socket in a private directory and every connection must prove the
shared key (``multiprocessing.connection``'s HMAC challenge), so nothing else on the
machine can call in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, Final, cast

from remarket.errors import StorageError
from remarket.storage.warehouse.base import EventPage, IdentityRow, Warehouse

__all__ = ["RemoteWarehouse", "WarehouseServer"]

_log = logging.getLogger(__name__)

# What a remote caller may invoke: the Warehouse protocol, and nothing else of the object.
_CALLS: Final = frozenset(
    {
        "committed",
        "write_events",
        "upsert_identities",
        "profile_events",
        "count_events",
        "erase",
        "residue",
        "delete_events",
        "query",
    }
)
_DIALECT: Final = "dialect"


def _portable(exc: Exception) -> Exception:
    """The exception itself if it survives pickling, else a StorageError with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return StorageError(f"warehouse call failed: {type(exc).__name__}: {exc}")
    return exc


def _hang_up(conn: Connection) -> None:
    """Shut the socket down under a thread blocked reading it: its recv() ends at once
    (closing the descriptor alone would not wake it)."""
    with contextlib.suppress(OSError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class WarehouseServer:
    """Answers :class:`RemoteWarehouse` calls on a Unix socket, one thread per connection."""

    def __init__(self, warehouse: Warehouse, address: str, authkey: bytes) -> None:
        self._warehouse = warehouse
        self._address = address
        self._authkey = authkey
        self._listener = Listener(address, family="AF_UNIX", authkey=authkey)
        self._stopping = threading.Event()
        self._open: set[Connection] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._accept, name="remarket-warehouse-server", daemon=True)
        ]

    def start(self) -> None:
        self._threads[0].start()

    def close(self) -> None:
        """Stop serving and wait for the serving threads, which hold the warehouse.

        Safe to call more than once, and from any thread."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
        # accept() is not woken by closing the listener: knock once instead. The knock is a
        # bare connect, with no key handshake to wait on: if the accepting thread has
        # already left its loop, nobody would ever answer one.
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as knock:
            knock.settimeout(1.0)
            knock.connect(self._address)
        self._listener.close()
        with self._lock:
            for conn in self._open:
                _hang_up(conn)
        for thread in self._threads:
            if thread.ident is not None:  # started
                thread.join()

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                conn = self._listener.accept()
            except OSError:
                return  # closed
            except Exception as exc:  # a caller without the key: refuse it, keep serving
                if not self._stopping.is_set():  # else it was close()'s knock
                    _log.warning("refused a warehouse connection: %s", exc)
                continue
            thread = threading.Thread(
                target=self._serve, args=(conn,), name="remarket-warehouse-call", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: Connection) -> None:
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            self._open.add(conn)
        try:
            while True:
                try:
                    name, args, kwargs = conn.recv()
                except (EOFError, OSError):
                    return  # the caller hung up, or close() did
                if self._stopping.is_set():
                    return
                answer = self._answer(name, args, kwargs)
                try:
                    conn.send(answer)
                except OSError:
                    return  # hung up while we worked
        finally:
            with self._lock:
                self._open.discard(conn)
            conn.close()

    def _answer(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if name == _DIALECT:
            return True, self._warehouse.dialect
        if name not in _CALLS:
            return False, ValueError(f"{name!r} is not a warehouse call")
        try:
            return True, getattr(self._warehouse, name)(*args, **kwargs)
        except Exception as exc:
            return False, _portable(exc)


class RemoteWarehouse:
    """The API's handle on a warehouse that another process owns.

    Connections are pooled, one per concurrent caller; a call that cannot reach the owner
    raises :class:`~remarket.errors.StorageError` (503 at the API).
    """

    def __init__(
        self,
        address: str,
        authkey: bytes,
        *,
        timeout: float = 60.0,
        owner_alive: Callable[[], bool] = lambda: True,
    ) -> None:
        self._address = address
        self._authkey = authkey
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._idle.put(self._connect())
                break
            except OSError as exc:
                if not owner_alive():
                    raise StorageError(
                        "the workers' process exited before serving the warehouse: see its "
                        "output above"
                    ) from exc
                if time.monotonic() > deadline:
                    raise StorageError(
                        f"the workers' warehouse at {address} did not answer"
                    ) from exc
                time.sleep(0.05)
        self.dialect = cast(str, self._call(_DIALECT))

    def _connect(self) -> Connection:
        return Client(self._address, family="AF_UNIX", authkey=self._authkey)

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            conn = None
        try:
            conn = conn or self._connect()
            conn.send((name, args, kwargs))
            ok, value = conn.recv()
        except (EOFError, OSError) as exc:
            if conn is not None:
                conn.close()
            raise StorageError("the workers' process, which owns the warehouse, is gone") from exc
        self._idle.put(conn)
        if not ok:
            raise value
        return value

    def committed(self, consumer: str) -> int:
        return cast(int, self._call("committed", consumer))

    def write_events(
        self, consumer: str, rows: Sequence[tuple[int, Any]], through: int, *, expected: int
    ) -> None:
        self._call("write_events", consumer, list(rows), through, expected=expected)

    def upsert_identities(self, rows: Sequence[IdentityRow]) -> None:
        self._call("upsert_identities", list(rows))

    def profile_events(
        self,
        anonymous_ids: Sequence[str],
        user_ids: Sequence[str],
        *,
        limit: int,
        cursor: str | None = None,
    ) -> EventPage:
        return cast(
            EventPage,
            self._call(
                "profile_events", list(anonymous_ids), list(user_ids), limit=limit, cursor=cursor
            ),
        )

    def count_events(self) -> int:
        return cast(int, self._call("count_events"))

    def erase(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        return cast(int, self._call("erase", list(ids), list(profile_ids)))

    def residue(self, ids: Sequence[str], profile_ids: Sequence[str]) -> int:
        return cast(int, self._call("residue", list(ids), list(profile_ids)))

    def delete_events(self, source_id: str | None, event_type: str, before: datetime) -> int:
        return cast(int, self._call("delete_events", source_id, event_type, before))

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return cast(list[tuple[Any, ...]], self._call("query", sql, list(params)))

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return
