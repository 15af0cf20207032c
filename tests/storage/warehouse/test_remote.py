"""The socket between the API and the warehouse its worker process owns: who may call,
what may be called, and what the API sees when the owner is gone.

The whole warehouse contract also runs over this socket (test_warehouse.py,
``duckdb-over-socket``)."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import pytest

from remarket.errors import StorageError
from remarket.storage.warehouse import DuckDBWarehouse
from remarket.storage.warehouse.remote import RemoteWarehouse, WarehouseServer
from tests.storage.warehouse.served import ServedDuckDB


@pytest.fixture
def short_socket() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="rm-")  # AF_UNIX paths are short
    yield f"{directory}/wh.sock"
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServedDuckDB]:
    wh = ServedDuckDB(tmp_path / "warehouse.duckdb")
    yield wh
    wh.close()


def test_answers_in_the_owners_dialect(served: ServedDuckDB) -> None:
    assert served.dialect == served.owned.dialect == "duckdb"
    assert served.query("SELECT ? + 1", [41]) == [(42,)]


def test_a_caller_without_the_key_is_refused_and_others_are_still_served(
    served: ServedDuckDB,
) -> None:
    with pytest.raises(AuthenticationError):
        Client(served.address, family="AF_UNIX", authkey=b"not the key")
    assert served.count_events() == 0


def test_only_warehouse_calls_are_answered(served: ServedDuckDB) -> None:
    for name in ("close", "_cursor", "__class__"):
        with pytest.raises(ValueError, match="is not a warehouse call"):
            served._call(name)
    assert served.count_events() == 0  # the owner was not closed


def test_the_owners_error_reaches_the_caller(served: ServedDuckDB) -> None:
    with pytest.raises(Exception, match="no_such_table"):
        served.query("SELECT * FROM no_such_table")
    assert served.query("SELECT 1") == [(1,)]  # the connection is still usable


def test_an_unpicklable_error_arrives_as_a_storage_error(
    served: ServedDuckDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unpicklable(Exception):
        def __reduce__(self) -> object:
            raise TypeError("cannot pickle")

    def fail(*_: object) -> object:
        raise Unpicklable("boom")

    monkeypatch.setattr(served.owned, "count_events", fail)
    with pytest.raises(StorageError, match="Unpicklable: boom"):
        served.count_events()


def test_when_the_owner_is_gone_calls_fail_as_storage_errors(served: ServedDuckDB) -> None:
    served.server.close()
    with pytest.raises(StorageError, match="gone"):
        served.count_events()


def test_closing_returns_at_once_even_with_nobody_accepting(
    tmp_path: Path, short_socket: str
) -> None:
    # close() wakes the accepting thread by connecting to it; when that thread has already
    # left its loop (here: it never started), the knock must not wait for an answer.
    owned = DuckDBWarehouse(tmp_path / "w.duckdb")
    server = WarehouseServer(owned, short_socket, b"key")

    def close_twice() -> None:
        server.close()
        server.close()

    closing = threading.Thread(target=close_twice, daemon=True)
    closing.start()
    closing.join(timeout=10)
    assert not closing.is_alive()
    owned.close()


def test_a_server_closed_twice_stops_serving_once(served: ServedDuckDB) -> None:
    served.server.close()
    served.server.close()
    with pytest.raises(StorageError, match="gone"):
        served.count_events()


def test_an_owner_that_never_answers_fails_the_start(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="did not answer"):
        RemoteWarehouse(str(tmp_path / "absent.sock"), b"key", timeout=0.2)


def test_an_owner_that_died_fails_the_start_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(StorageError, match="exited before serving"):
        RemoteWarehouse(str(tmp_path / "absent.sock"), b"key", owner_alive=lambda: False)
    assert time.monotonic() - started < 5  # not the 60 s start timeout
