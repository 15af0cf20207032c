"""Helpers shared by the benchmarks: servers in subprocesses, machine facts, the JSON line."""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final

from sqlalchemy import Engine

from remarket.clock import SystemClock
from remarket.collect import Collector, QuarantineStore
from remarket.collect.seal import SealPII
from remarket.config import Settings
from remarket.privacy.keyring import Keyring
from remarket.privacy.seal import Sealer
from remarket.storage.log import EventLog

__all__ = [
    "BENCH_DIR",
    "REPO",
    "Server",
    "basic_auth",
    "cpu_seconds",
    "final_line",
    "free_port",
    "get_json",
    "machine",
    "progress",
    "py_spy",
    "remarket_bin",
    "remarket_server",
    "started",
    "table",
    "tmp_dir",
    "top_frames",
    "utc_now",
    "wrk",
]

BENCH_DIR: Final = Path(__file__).resolve().parent
REPO: Final = BENCH_DIR.parent
_T0: Final = time.monotonic()


def progress(message: str) -> None:
    """A progress line on stderr, so stdout keeps the table and the JSON line."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", file=sys.stderr, flush=True)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def machine() -> str:
    """Cores, CPU model, RAM, OS and Python: what a figure depends on."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "? GiB"
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
                break
    return (
        f"{os.cpu_count()} cores {model}, {ram} RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def tmp_dir(prefix: str) -> Iterator[Path]:
    """A scratch folder on the same disk as the system's temp dir, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix=f"remarket-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remarket_bin() -> str:
    """The `remarket` console script of the interpreter running the benchmark."""
    candidate = Path(sys.executable).parent / "remarket"
    return str(candidate) if candidate.exists() else "remarket"


def basic_auth(write_key: str) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class Server:
    """A server in a subprocess; its output goes to a file kept for diagnostics."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    output: Path
    data_dir: Path | None = None
    write_key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.output.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM (uvicorn shuts down gracefully), then SIGKILL after ``timeout``."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            progress(f"{self.name}: no exit after {timeout:.0f} s; killing")
            self.process.kill()
            self.process.wait(10)


@contextlib.contextmanager
def started(
    name: str,
    argv: Sequence[str],
    port: int,
    *,
    env: Mapping[str, str] | None = None,
    log_dir: Path,
    ready_path: str = "/healthz",
    timeout: float = 60.0,
) -> Iterator[Server]:
    """Start ``argv`` (listening on ``port``), wait until ``ready_path`` answers, stop after."""
    output = log_dir / f"{name}.out"
    sink: IO[bytes] = output.open("wb")
    process = subprocess.Popen(
        list(argv),
        stdout=sink,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        cwd=log_dir,
    )
    server = Server(name, f"http://127.0.0.1:{port}", process, output)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{server.tail()}")
            try:
                get_json(server.url + ready_path, timeout=2)
                break
            except (OSError, urllib.error.URLError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout:.0f} s") from None
                time.sleep(0.1)
        yield server
    finally:
        server.stop()
        sink.close()


@contextlib.contextmanager
def remarket_server(
    data_dir: Path, *, workers: str = "process", env: Mapping[str, str] | None = None
) -> Iterator[Server]:
    """`remarket serve --workers WORKERS` on a free port over ``data_dir``, with a fresh
    source's write key."""
    settings_env = {"REMARKET_DATA_DIR": str(data_dir), **(env or {})}
    full_env = {**os.environ, **settings_env}
    created = subprocess.run(
        [remarket_bin(), "sources", "create", "bench"],
        env=full_env,
        cwd=data_dir,
        capture_output=True,
        text=True,
        check=True,
    )
    write_key = [line for line in created.stdout.splitlines() if line.strip()][-1].strip()
    port = free_port()
    argv = [remarket_bin(), "serve", "--port", str(port), "--workers", workers]
    name = f"remarket-serve-workers-{workers}"
    with started(name, argv, port, env=settings_env, log_dir=data_dir) as server:
        server.data_dir = data_dir
        server.write_key = write_key
        yield server


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


WRK_BATCH_LUA: Final = BENCH_DIR / "wrk" / "batch.lua"


def wrk(
    url: str,
    auth: str,
    nonce: str,
    *,
    seconds: float,
    connections: int,
    threads: int,
    batch: int = 100,
    new_device_every: int = 0,
    device_seed: int | None = None,
) -> dict[str, float]:
    """Run wrk with batch.lua (``/v1/batch`` of ``batch`` events; with
    ``new_device_every`` N, every Nth event from a device never seen before; runs with the
    same ``device_seed`` send the same devices); the figures its done() prints."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: run `bash scripts/ensure-bench-tools.sh`")
    argv = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s"]
    argv += ["--latency", "--timeout", "10s", "-s", str(WRK_BATCH_LUA), f"{url}/v1/batch"]
    argv += ["--", auth, nonce, str(batch), str(new_device_every)]
    argv += [] if device_seed is None else [str(device_seed)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120)
    for line in done.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            figures: dict[str, float] = json.loads(line.removeprefix("WRK_JSON "))
            if done.stderr.strip():
                progress(f"wrk stderr: {done.stderr.strip()[:500]}")
            return figures
    raise RuntimeError(f"wrk printed no figures (exit {done.returncode}):\n{done.stderr}")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain-text table, right-aligned numbers."""
    cells = [[str(h) for h in headers], *[[_cell(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def final_line(
    name: str, figures: Mapping[str, object], targets: Mapping[str, object], met: bool
) -> None:
    """The benchmark's last stdout line: one JSON object (DESIGN.md, Benchmarks)."""
    record: dict[str, object] = {"benchmark": name, "date": utc_now(), "machine": machine()}
    record.update(figures)
    record["targets"] = dict(targets)
    record["met"] = met
    print(json.dumps(record), flush=True)


# -- profiling -----------------------------------------------------------------


def _py_spy_bin() -> str | None:
    candidate = Path(sys.executable).parent / "py-spy"
    return str(candidate) if candidate.exists() else shutil.which("py-spy")


@contextlib.contextmanager
def py_spy(pid: int, output: Path, *, rate: int = 97) -> Iterator[bool]:
    """Sample ``pid`` with py-spy (collapsed stacks, all threads, idle frames dropped)
    while the block runs. Yields False (and does nothing) when py-spy is missing."""
    exe = _py_spy_bin()
    if exe is None:
        progress("py-spy not found (pip install py-spy into the venv); not profiling")
        yield False
        return
    argv = [exe, "record", "--pid", str(pid), "--format", "raw", "--output", str(output)]
    process = subprocess.Popen(
        [*argv, "--rate", str(rate), "--nonblocking", "--threads"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield True
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def top_frames(
    collapsed: Path, n: int = 20
) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """From py-spy's collapsed stacks: the ``n`` functions with the most self time and
    with the most inclusive time, each as (function, share of samples)."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    with contextlib.suppress(OSError):
        for line in collapsed.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = [f for f in stack.split(";") if not f.startswith("thread ")]
            if not frames:
                continue
            total += count
            own[frames[-1]] += count
            for frame in set(frames):
                inclusive[frame] += count
    if total == 0:
        return [], []
    return (
        [(f, c / total) for f, c in own.most_common(n)],
        [(f, c / total) for f, c in inclusive.most_common(n)],
    )


# -- collect -------------------------------------------------------------------


def sealing_collector(
    settings: Settings, engine: Engine, log: EventLog, *, sealed: bool
) -> tuple[Collector, Keyring]:
    """A collector with the sealing stage (encryption on when ``sealed``), as `remarket
    serve` builds it without the guard: ``(collector, keyring)``."""
    keyring = Keyring(engine)
    stage = SealPII(Sealer(keyring, settings.pii_fields) if sealed else None, keyring)
    collector = Collector(
        settings,
        log,
        QuarantineStore(engine),
        SystemClock(),
        extra_stages=[stage],
        barriers=[stage.durable],
    )
    return collector, keyring
