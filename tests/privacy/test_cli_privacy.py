"""`remarket privacy erase | verify-erased | export` on the embedded stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from remarket.api import create_app
from remarket.cli import app
from remarket.config import Settings
from tests.api.harness import Server
from tests.api.platforms import ad_platforms, outbox, shop, wait

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {"REMARKET_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}


def _populate(data_dir: Path) -> str:
    settings = Settings(data_dir=data_dir, log_fsync="normal", worker_poll_interval_s=0.01)
    with TestClient(create_app(settings)) as client:
        server = Server.of(client)
        runtime = server.runtime
        batch = [
            {"type": "track", "anonymousId": "a-cli-1", "event": "Viewed", "messageId": "m1"},
            {
                "type": "identify",
                "anonymousId": "a-cli-1",
                "userId": "u-cli-1",
                "messageId": "m2",
                "traits": {"email": "cli@example.com"},
            },
            {"type": "track", "anonymousId": "a-cli-2", "event": "Viewed", "messageId": "m3"},
        ]
        assert server.send("/v1/batch", {"batch": batch}).json()["accepted"] == 3
        server.drain()
        profile = runtime.profiles.find(("user_id", "u-cli-1"))
        assert profile is not None
        return profile


def test_erase_then_verify_then_export(env: dict[str, str], tmp_path: Path) -> None:
    profile_id = _populate(tmp_path / "var")
    before = runner.invoke(app, ["privacy", "verify-erased", "cli@example.com"], env=env)
    assert before.exit_code == 1, before.output
    exported = runner.invoke(
        app, ["privacy", "export", profile_id, "--output", "ann.json"], env=env
    )
    assert exported.exit_code == 0, exported.output
    document = json.loads((tmp_path / "ann.json").read_text())
    assert document["profile"]["traits"] == {"email": "cli@example.com"}
    assert sorted(e["message_id"] for e in document["events"]) == ["m1", "m2"]

    erased = runner.invoke(app, ["privacy", "erase", "u-cli-1"], env=env)
    assert erased.exit_code == 0, erased.output
    assert "pii_keys" in erased.output
    # Gone from the files too: the state store is scrubbed, the warehouse compacted.
    files = [p for p in (tmp_path / "var").rglob("*") if p.is_file()]
    for value in (b"u-cli-1", b"a-cli-1", b"cli@example.com", profile_id.encode()):
        assert [p.name for p in files if value in p.read_bytes()] == [], value
    assert any(b"a-cli-2" in p.read_bytes() for p in files)
    for value in ("u-cli-1", "a-cli-1", "cli@example.com", profile_id):
        after = runner.invoke(app, ["privacy", "verify-erased", value], env=env)
        assert after.exit_code == 0, after.output
        assert "remain" in after.output
    again = runner.invoke(app, ["privacy", "erase", "u-cli-1"], env=env)
    assert again.exit_code == 1
    assert "no profile holds" in again.output
    # The other visitor is still there.
    other = runner.invoke(app, ["privacy", "verify-erased", "a-cli-2"], env=env)
    assert other.exit_code == 1


def test_verify_erased_reports_pending_platform_removals_apart(
    env: dict[str, str], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "var", log_fsync="normal", worker_poll_interval_s=0.01)
    ann = {"userId": "u-cli-ann", "email": "ann@example.com", "phone": "+33 6 12 34 56 78"}

    with ad_platforms() as platforms:
        with TestClient(create_app(settings)) as client:
            server = Server.of(client)
            ids = shop(server, platforms, {"ann": (ann, "pro", True)})
        # The server is down: the erasure's removals wait in the outbox.
        erased = runner.invoke(app, ["privacy", "erase", ann["userId"]], env=env)
        assert erased.exit_code == 0, erased.output
        assert "queued.audiences" in erased.output
        after = runner.invoke(app, ["privacy", "verify-erased", ids["ann"]], env=env)
        assert after.exit_code == 0, after.output  # hashes to send are not residue
        assert "pending platform removals (hashed identifiers): 2 to audiences" in after.output
        with TestClient(create_app(settings)) as client:  # its deliverer sends them
            engine = client.app.state.runtime.engine  # type: ignore[attr-defined]
            wait(lambda: not outbox(engine), "the removals to go out")
        assert [r.method for r in platforms.meta.requests] == ["POST", "DELETE"]
    done = runner.invoke(app, ["privacy", "verify-erased", ids["ann"]], env=env)
    assert done.exit_code == 0 and "pending" not in done.output, done.output
