"""The one server that collects into an embedded log: an exclusive lock beside the file.

A server remembers recent messageIds in memory to keep replays out of the log; a second
server collecting into the same embedded file would not see the first one's, and a
client's retry sent to it would be stored twice. So a server takes this lock before it
collects, and a second one is refused at start. (With NATS JetStream the log itself
de-duplicates across servers: no lock.) The kernel drops the lock when its process ends,
killed or not.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from remarket.config import Settings
from remarket.errors import StorageError
from remarket.storage.log.factory import embedded_log_path

__all__ = ["LogOwner"]


class LogOwner:
    """Held by the server collecting into an embedded log, until :meth:`release`.

    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> owner = LogOwner(folder / "log.db")
    >>> try:
    ...     LogOwner(folder / "log.db")
    ... except StorageError as refused:
    ...     print(refused.field)
    log_url
    >>> owner.release()
    >>> LogOwner(folder / "log.db").release()
    """

    def __init__(self, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(log_path.with_name(f"{log_path.name}.lock"), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            holder = os.read(self._fd, 32).decode(errors="replace").strip()
            os.close(self._fd)
            raise StorageError(
                f"the event log {log_path} is collected into by another process"
                f"{f' (PID {holder})' if holder.isdigit() else ''}: an embedded log takes one "
                "server at a time (each keeps its own memory of messageIds against replays). "
                "Stop that server, or put the log on NATS (REMARKET_LOG_URL) to run several",
                field="log_url",
            ) from exc
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    @classmethod
    def of(cls, settings: Settings) -> LogOwner | None:
        """The lock of the settings' log if it is embedded (None for NATS)."""
        path = embedded_log_path(settings)
        return cls(path) if path is not None else None

    def release(self) -> None:
        if self._fd < 0:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1
