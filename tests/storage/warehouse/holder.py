"""Another process holding an embedded DuckDB warehouse, as a running server does."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from remarket.storage.warehouse import DuckDBWarehouse

_HOLD = """
import sys, time, duckdb
db = duckdb.connect(sys.argv[1])
print("locked", flush=True)
if len(sys.argv) > 2:
    time.sleep(float(sys.argv[2]))
else:
    sys.stdin.read()
db.close()
"""


@contextmanager
def held_elsewhere(path: Path, seconds: float | None = None) -> Iterator[int]:
    """The warehouse file at ``path`` (made if absent) locked by a child process, whose
    pid this yields; it lets go after ``seconds``, or else when the block ends."""
    if not path.exists():
        DuckDBWarehouse(path).close()
    argv = [sys.executable, "-c", _HOLD, str(path), *([str(seconds)] if seconds else [])]
    holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        yield holder.pid
    finally:
        holder.communicate(b"")
