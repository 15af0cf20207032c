"""A DuckDB warehouse reached over a WarehouseServer's socket, as `remarket serve`'s API
reaches the one its worker process owns (here the server runs in a thread of the test)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from remarket.storage.warehouse import DuckDBWarehouse
from remarket.storage.warehouse.remote import RemoteWarehouse, WarehouseServer


class ServedDuckDB(RemoteWarehouse):
    """The remote handle; closing it also stops the server and closes the DuckDB file."""

    def __init__(self, path: Path) -> None:
        self.socket_dir = tempfile.mkdtemp(prefix="rm-")  # AF_UNIX paths are short
        self.address, self.key = f"{self.socket_dir}/wh.sock", os.urandom(16)
        self.owned = DuckDBWarehouse(path)
        self.server = WarehouseServer(self.owned, self.address, self.key)
        self.server.start()
        super().__init__(self.address, self.key)

    def close(self) -> None:
        super().close()
        self.server.close()
        self.owned.close()
        shutil.rmtree(self.socket_dir, ignore_errors=True)
