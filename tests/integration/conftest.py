"""Fixtures that run a real `remarket serve` process on a free port with its own data dir."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

REMARKET = Path(sys.executable).with_name("remarket")
CONSUMERS = ("warehouse", "profiles", "segments", "consent", "journeys")
START_TIMEOUT_S = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(data_dir: Path) -> dict[str, str]:
    """The environment of a test server: ours without REMARKET_*, plus its data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMARKET_")}
    env["REMARKET_DATA_DIR"] = str(data_dir)
    # No remarket.toml may leak in from wherever the tests run.
    env["REMARKET_CONFIG"] = str(data_dir / "absent-remarket.toml")
    return env


def _cli(data_dir: Path, *args: str) -> str:
    """Run a `remarket` command against ``data_dir``; return its last output line."""
    done = subprocess.run(
        [str(REMARKET), *args],
        env=server_env(data_dir),
        cwd=data_dir.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"remarket {' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1].strip()


class ServerProcess:
    """One `remarket serve` subprocess over a data dir; can be killed and started again.

    Each start picks a new free port, so a restart never races the dying process for it.
    """

    def __init__(self, data_dir: Path, api_key: str, env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.api_key = api_key
        self.env = env or {}
        self.write_key = ""
        self.output = data_dir.parent / "server.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.base_url = ""

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.pid

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("the server is already running")
        port = _free_port()
        self.base_url = f"http://127.0.0.1:{port}"
        with self.output.open("ab") as out:
            out.write(f"\n--- starting on port {port} ---\n".encode())
            out.flush()
            self._process = subprocess.Popen(
                [str(REMARKET), "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=server_env(self.data_dir) | self.env,
                cwd=self.data_dir.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"remarket serve exited with {code}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"remarket serve did not answer /healthz:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, exactly like a crash."""
        if self._process is None:
            return
        os.kill(self._process.pid, signal.SIGKILL)
        self._process.wait(timeout=30)
        self._process = None

    def stop(self) -> None:
        """SIGTERM and wait for a clean exit (SIGKILL after 30 s)."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)

    def create_source(self, name: str = "integration") -> str:
        """Create a source through the admin API; remember and return its write key."""
        with self.api() as api:
            response = api.post("/v1/sources", json={"name": name})
        if response.status_code != 201:
            raise RuntimeError(f"POST /v1/sources: {response.status_code} {response.text}")
        self.write_key = str(response.json()["write_key"])
        return self.write_key

    def log_tail(self, lines: int = 40) -> str:
        if not self.output.exists():
            return ""
        return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])

    def api(self, timeout: float = 10.0) -> httpx.Client:
        """A client of the read API, authenticated with the admin key."""
        return httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=timeout,
        )

    def health(self) -> dict[str, Any]:
        response = httpx.get(f"{self.base_url}/healthz", timeout=5.0)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def wait_for_lag_zero(self, timeout: float = 30.0) -> dict[str, Any]:
        """Poll /healthz until both workers have applied the whole log; return the last body."""
        deadline = time.monotonic() + timeout
        health: dict[str, Any] = {}
        while time.monotonic() < deadline:
            health = self.health()
            lag = health["lag"]
            if health["log_end_offset"] == 0 or all(lag.get(c) == 0 for c in CONSUMERS):
                return health
            time.sleep(0.05)
        raise AssertionError(f"workers did not catch up within {timeout} s: {health}")


def start_new_server(root: Path, env: dict[str, str] | None = None) -> ServerProcess:
    """A running server over a fresh data dir under ``root``, with an admin key and a source
    (``env``: settings of its own, as REMARKET_* variables).

    The admin key comes from the CLI (run before the server, as an operator would); the
    source from ``POST /v1/sources``. The caller must ``stop()`` the server.
    """
    data_dir = root / "var"
    data_dir.mkdir(parents=True)
    api_key = _cli(data_dir, "keys", "create", "--role", "admin", "--name", "integration")
    if not api_key.startswith("rk_"):
        raise RuntimeError(f"unexpected API key from the CLI: {api_key!r}")
    server = ServerProcess(data_dir, api_key, env)
    try:
        server.start()
        server.create_source()
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running server over its own data dir, for tests that kill and restart it.

    Always stopped at teardown, whatever state the test left it in.
    """
    server = start_new_server(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class LiveServer:
    """What a test needs of a running server."""

    base_url: str
    write_key: str
    api_key: str
    process: ServerProcess


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A running server shared by a module's tests (each test uses its own ids)."""
    server = start_new_server(tmp_path_factory.mktemp("remarket"))
    try:
        yield LiveServer(server.base_url, server.write_key, server.api_key, server)
    finally:
        server.stop()
