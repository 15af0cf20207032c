"""The `remarket` command: settings, sources, keys, quarantine and the demo."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from remarket.cli import app, server_logging
from remarket.config import Settings
from remarket.storage.log.owner import LogOwner
from remarket.workers import process
from tests.storage.warehouse.holder import held_elsewhere

runner = CliRunner()


@pytest.fixture
def remarket_log() -> Iterator[None]:
    """Undoes what `server_logging` (run by the server commands) sets up on the
    ``remarket`` logger: a handler on a stream that ends with the test."""
    yield
    logger = logging.getLogger("remarket")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {"REMARKET_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}


def test_config_show_masks_secrets(env: dict[str, str]) -> None:
    env["REMARKET_DATABASE_URL"] = "postgresql+psycopg://app:hunter2@db/remarket"
    result = runner.invoke(app, ["config", "show"], env=env)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
    assert "REMARKET_DATABASE_URL" in result.output
    assert "**********" in result.output


def test_config_reads_remarket_toml(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "remarket.toml").write_text("port = 9123\n")
    result = runner.invoke(app, ["config", "show"], env=env)
    assert "9123" in result.output


def test_readme_configuration_reference_lists_every_setting(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["config", "reference"], env=env)
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if line.startswith("| `REMARKET_")]
    assert len(rows) == len(Settings.model_fields)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert result.output in readme, "README's table is stale: paste `remarket config reference`"


def test_invalid_setting_is_a_clear_error(env: dict[str, str]) -> None:
    env["REMARKET_LOG_FSYNC"] = "sometimes"
    result = runner.invoke(app, ["config", "show"], env=env)
    assert result.exit_code == 2
    assert "log_fsync" in result.output


def test_sources_create_prints_a_write_key_once(env: dict[str, str]) -> None:
    created = runner.invoke(app, ["sources", "create", "web"], env=env)
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    assert key.startswith("wk_")
    listed = runner.invoke(app, ["sources", "list"], env=env)
    assert "web" in listed.output and key not in listed.output
    again = runner.invoke(app, ["sources", "create", "web"], env=env)
    assert again.exit_code == 1 and "exists already" in again.output


def test_keys_create_checks_the_role(env: dict[str, str]) -> None:
    assert runner.invoke(app, ["keys", "create", "--role", "admin"], env=env).output.startswith(
        "rk_"
    )
    bad = runner.invoke(app, ["keys", "create", "--role", "root"], env=env)
    assert bad.exit_code == 2


def test_worker_refuses_the_people_part_on_the_embedded_warehouse(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["worker", "--part", "people"], env=env)
    assert result.exit_code == 2
    assert "PostgreSQL" in result.output and "REMARKET_WORKER_SPLIT" in result.output
    unknown = runner.invoke(app, ["worker", "--part", "everything"], env=env)
    assert unknown.exit_code == 2


def test_worker_says_who_holds_the_warehouse_instead_of_a_traceback(
    env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remarket_log: None
) -> None:
    path = tmp_path / "var" / "warehouse.duckdb"
    monkeypatch.setattr(process, "_OWNER_GONE_WITHIN_S", 0.2)  # it waits a minute otherwise
    with held_elsewhere(path) as pid:
        result = runner.invoke(app, ["worker"], env=env)
    assert result.exit_code == 1
    # Without white space: the console folds long lines, paths included, to its width.
    said = "".join(result.output.split())
    expected = f"workers: the warehouse {path} is in use by another process (PID {pid})"
    assert "".join(expected.split()) in said
    assert "Traceback" not in said


def test_a_second_server_on_the_same_log_is_refused_in_a_line(
    env: dict[str, str], tmp_path: Path
) -> None:
    owner = LogOwner(tmp_path / "var" / "log.db")  # as a running server holds it
    try:
        result = runner.invoke(app, ["serve", "--port", "1"], env=env)
    finally:
        owner.release()
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # as folded to the console's width
    assert f"is collected into by another process (PID {os.getpid()})" in said
    assert "Traceback" not in said


def test_db_upgrade_is_idempotent(env: dict[str, str]) -> None:
    assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    assert runner.invoke(app, ["db", "upgrade"], env=env).exit_code == 0
    assert (Path(env["REMARKET_DATA_DIR"]) / "state.db").is_file()


def test_quarantine_list_on_an_empty_store(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["quarantine", "list"], env=env)
    assert result.exit_code == 0 and "reason" in result.output
    replay = runner.invoke(app, ["quarantine", "replay"], env=env)
    assert "replayed 0" in replay.output


def test_demo_sends_traffic_and_exits_with_no_serve(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["demo", "--no-serve", "--visitors", "40", "--seed", "3"], env=env)
    assert result.exit_code == 0, result.output
    assert "What landed" in result.output
    assert "devices merged on sign-in" in result.output
    assert "segment cart-abandoners" in result.output


def test_servers_show_remarkets_own_log_once(
    capsys: pytest.CaptureFixture[str], remarket_log: None
) -> None:
    server_logging()
    server_logging()  # a second call adds no second handler
    logging.getLogger("remarket.privacy.erasers").info("warehouse compacted in 1.0 s")
    logging.getLogger("remarket.privacy.erasers").debug("not shown")
    err = capsys.readouterr().err
    assert err == "INFO:     remarket.privacy.erasers: warehouse compacted in 1.0 s\n"
