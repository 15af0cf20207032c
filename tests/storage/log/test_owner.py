"""One server collects into an embedded log: a second is refused, a killed one lets go."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from remarket.config import Settings
from remarket.errors import StorageError
from remarket.storage.log.owner import LogOwner

_OWN = """
import sys
from pathlib import Path
from remarket.storage.log.owner import LogOwner
owner = LogOwner(Path(sys.argv[1]))
print("owned", flush=True)
sys.stdin.read()
"""


def _owned_elsewhere(path: Path) -> subprocess.Popen[bytes]:
    holder = subprocess.Popen(
        [sys.executable, "-c", _OWN, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert holder.stdout is not None and holder.stdout.readline() == b"owned\n"
    return holder


def test_a_second_collector_is_refused_naming_the_first(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    holder = _owned_elsewhere(path)
    try:
        with pytest.raises(StorageError, match=rf"another process \(PID {holder.pid}\)") as no:
            LogOwner(path)
        assert no.value.field == "log_url"
        assert "REMARKET_LOG_URL" in no.value.detail
    finally:
        holder.communicate(b"")
    LogOwner(path).release()  # the holder ended: free again


def test_a_killed_collector_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    holder = _owned_elsewhere(path)
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    owner = LogOwner(path)
    with pytest.raises(StorageError):
        LogOwner(path)  # held again, by this process now
    owner.release()
    owner.release()  # twice is harmless


def test_only_the_embedded_log_is_owned(tmp_path: Path) -> None:
    embedded = LogOwner.of(Settings(data_dir=tmp_path))
    assert embedded is not None
    embedded.release()
    nats = Settings(data_dir=tmp_path, log_url=SecretStr("nats://127.0.0.1:4222"))
    assert LogOwner.of(nats) is None  # JetStream de-duplicates across servers itself
