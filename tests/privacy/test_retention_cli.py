"""`remarket retention run|rules`, and the pseudonymisation key masked by `config show`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from remarket.cli import app
from remarket.schema.events import decode_log_message
from remarket.storage.warehouse import DuckDBWarehouse

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {"REMARKET_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}


def test_retention_run_deletes_expired_warehouse_events(
    env: dict[str, str], tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    warehouse = DuckDBWarehouse(tmp_path / "var" / "warehouse.duckdb")
    rows = [
        (
            i,
            decode_log_message(
                msgspec.json.encode(
                    {
                        "type": "page",
                        "userId": "u",
                        "timestamp": (now - timedelta(days=age)).isoformat(),
                        "receivedAt": now.isoformat(),
                    }
                )
            ),
        )
        for i, age in enumerate((90, 10), 1)
    ]
    warehouse.write_events("warehouse", rows, 2, expected=0)
    warehouse.close()
    env["REMARKET_RETENTION_DEFAULT_DAYS"] = "30"
    result = runner.invoke(app, ["retention", "run"], env=env)
    assert result.exit_code == 0, result.output
    assert "deleted 1 warehouse events" in result.output
    listed = runner.invoke(app, ["retention", "rules"], env=env)
    assert "(default)" in listed.output and "30" in listed.output


def test_config_show_masks_the_pseudonymisation_key(env: dict[str, str]) -> None:
    env["REMARKET_PSEUDONYMISE_IDS"] = "true"
    env["REMARKET_PSEUDONYMISATION_KEY"] = "hunter2-hunter2"
    result = runner.invoke(app, ["config", "show"], env=env)
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output
