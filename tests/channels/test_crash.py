"""SIGKILL the deliverer while it sends to 10,000 profiles, restart it, and count at the
SMTP server: every message arrives, none as two different messages.

The guarantee is at-least-once transmission with a stable ``Message-ID`` per
idempotency key: each send is marked ``in_doubt`` before the server is reached and its
outcome recorded right after the server's 250, so a kill in between resends the
messages then in flight (at most one per concurrent sender), with the same Message-ID,
and records them as ``resent``. The test counts distinct Message-IDs (exactly 10,000),
bounds the repeats, and checks that every repeat is a message recorded as resent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from remarket.channels import OutboxMessage, enqueue_many
from remarket.channels.email import message_id_for
from remarket.channels.outbox import RESENT
from remarket.channels.registry import ProviderStore
from remarket.channels.secrets import SecretBox, load_key
from remarket.channels.templates import Template, TemplateStore
from remarket.config import Settings
from remarket.storage.state import (
    channel_outbox,
    connect_state,
    consents,
    profile_traits,
    profiles,
    upgrade_state,
)
from tests.channels.sinks import MailSink, smtp_server

ROOT = Path(__file__).resolve().parents[2]


def _prefill(data_dir: Path, port: int, n: int) -> None:
    settings = Settings(data_dir=data_dir)
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    now = datetime.now(UTC)
    pids = [f"p_{i:06d}" for i in range(n)]
    with engine.begin() as conn:
        conn.execute(profiles.insert(), [{"profile_id": p, "event_count": 1} for p in pids])
        conn.execute(
            profile_traits.insert(),
            [
                {
                    "profile_id": p,
                    "key": "email",
                    "value": f"{p}@example.com",
                    "ts": now,
                    "message_id": "m",
                }
                for p in pids
            ],
        )
        conn.execute(
            consents.insert(),
            [
                {
                    "profile_id": p,
                    "purpose": "email",
                    "state": "granted",
                    "source": "test",
                    "legal_basis": "consent",
                    "at": now,
                    "ref": "r",
                }
                for p in pids
            ],
        )
        enqueue_many(
            conn,
            [OutboxMessage(f"crash:{p}", p, "email", "promo", {}) for p in pids],
            now=now,
        )
    TemplateStore(engine).put(
        Template("promo", "email", "Hello {{ profile.id }}", None, "Sale today"), now=now
    )
    ProviderStore(engine, SecretBox(load_key(settings))).create(
        name="sink",
        kind="smtp",
        config={
            "host": "127.0.0.1",
            "port": port,
            "sender": "shop@shop.example",
            "security": "none",
        },
        credentials={},
        rate_per_s=None,
        now=now,
    )
    engine.dispose()


def _start(data_dir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.channels.crash_deliverer", str(data_dir)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == b"ready"
    return process


def _kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()
    if process.stdout is not None:
        process.stdout.close()


def _wait(sink: MailSink, process: subprocess.Popen[bytes], count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    shown = time.monotonic()
    while len(sink.distinct) < count:
        if time.monotonic() - shown > 5:
            shown = time.monotonic()
            print(f"{len(sink.distinct)} distinct, {len(sink.ids)} received", flush=True)
        assert process.poll() is None, "the deliverer died"
        assert time.monotonic() < deadline, f"only {len(sink.distinct)} of {count}"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_sigkill_while_sending_10000_then_restart_delivers_each_once() -> None:
    # Not pytest's tmp_path: other test runs on the machine may prune those meanwhile.
    with tempfile.TemporaryDirectory(prefix="remarket-crash-") as folder:
        _run(Path(folder), 10_000, (2_500, 6_000))


def _run(tmp_path: Path, n: int, kills: tuple[int, ...]) -> None:
    with smtp_server() as (sink, port):
        _prefill(tmp_path, port, n)
        for at in kills:
            process = _start(tmp_path)
            _wait(sink, process, at, timeout=600)
            _kill(process)
        process = _start(tmp_path)
        try:
            _wait(sink, process, n, timeout=900)
        finally:
            _kill(process)
        ids = list(sink.ids)

    expected = {message_id_for(f"crash:p_{i:06d}", "shop.example") for i in range(n)}
    assert set(ids) == expected
    repeats = len(ids) - len(set(ids))
    engine = connect_state(Settings(data_dir=tmp_path).resolved_database_url())
    with engine.connect() as conn:
        outcomes = {
            (status, reason, in_doubt): n
            for status, reason, in_doubt, n in conn.execute(
                select(
                    channel_outbox.c.status,
                    channel_outbox.c.reason,
                    channel_outbox.c.in_doubt,
                    func.count(),
                )
                .where(channel_outbox.c.status != "sent")
                .group_by(
                    channel_outbox.c.status, channel_outbox.c.reason, channel_outbox.c.in_doubt
                )
            )
        }
        resent = set(
            conn.scalars(
                select(channel_outbox.c.idempotency_key).where(channel_outbox.c.reason == RESENT)
            )
        )
    engine.dispose()
    print(
        f"\n{len(ids)} received, {len(set(ids))} distinct, {repeats} repeats, "
        f"{len(resent)} recorded as resent, {len(kills)} kills"
    )
    # Each kill may cut the record of the sends in flight: at most one per concurrent
    # sender (8), and each of those repeats carries the same Message-ID. The store knows
    # them: every repeat is a message recorded as resent (in doubt, sent again).
    assert repeats <= len(resent) <= 8 * len(kills)
    repeated = {i for i, count in Counter(ids).items() if count > 1}
    assert repeated <= {message_id_for(key, "shop.example") for key in resent}
    # The last process is killed once the last message arrived: the rows it had not
    # recorded yet (at most one per sender) are still in doubt.
    unrecorded = outcomes.pop(("pending", None, True), 0)
    assert outcomes == {} and unrecorded <= 8
