"""`remarket segments apply | preview | list`: definitions as code, idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from remarket.cli import app
from tests.storage.warehouse.holder import held_elsewhere

runner = CliRunner()

SEGMENTS_YAML = """
segments:
  - name: buyers
    entry: o
    nodes:
      - {id: o, type: performed, event: Order Completed}
  - name: carts
    entry: c
    nodes:
      - {id: c, type: cart_abandoned, within: 2h}
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {"REMARKET_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}


def test_apply_is_idempotent(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "segments.yaml").write_text(SEGMENTS_YAML)
    first = runner.invoke(app, ["segments", "apply", "segments.yaml"], env=env)
    assert first.exit_code == 0, first.output
    assert first.output.count("new version") == 2
    again = runner.invoke(app, ["segments", "apply", "segments.yaml"], env=env)
    assert again.output.count("unchanged") == 2
    (tmp_path / "segments.yaml").write_text(SEGMENTS_YAML.replace("2h", "3h"))
    edited = runner.invoke(app, ["segments", "apply", "segments.yaml"], env=env)
    assert edited.output.count("unchanged") == 1
    assert "new version" in edited.output
    listed = runner.invoke(app, ["segments", "list"], env=env)
    assert "carts" in listed.output and "buyers" in listed.output


def test_apply_reports_the_bad_node(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        "name: bad\nentry: o\nnodes:\n  - {id: o, type: performed, event: E, times: -1}\n"
    )
    result = runner.invoke(app, ["segments", "apply", "bad.yaml"], env=env)
    assert result.exit_code == 1
    assert "nodes[0].times" in result.output


def test_apply_checks_every_definition_before_saving_any(
    env: dict[str, str], tmp_path: Path
) -> None:
    bad = "  - {name: bad, entry: o, nodes: [{id: o, type: performed, event: E, times: -1}]}\n"
    worse = "  - {name: worse, entry: o, nodes: [{id: o, type: trait, path: 'a b'}]}\n"
    (tmp_path / "mixed.yaml").write_text(SEGMENTS_YAML + bad + worse)
    result = runner.invoke(app, ["segments", "apply", "mixed.yaml"], env=env)
    assert result.exit_code == 1
    assert "mixed.yaml[2] bad: nodes[0].times" in result.output
    assert "mixed.yaml[3] worse: nodes[0].path" in result.output  # every bad one, not the first
    assert "nothing applied" in result.output
    listed = runner.invoke(app, ["segments", "list"], env=env).output
    assert "buyers" not in listed and "carts" not in listed


def test_preview_counts_members(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "buyers.yaml").write_text(SEGMENTS_YAML)
    result = runner.invoke(app, ["segments", "preview", "buyers.yaml"], env=env)
    assert result.exit_code == 0, result.output
    assert "buyers: 0 members" in result.output


def test_preview_while_a_server_holds_the_warehouse_says_what_to_do(
    env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "buyers.yaml").write_text(SEGMENTS_YAML)
    with held_elsewhere(tmp_path / "var" / "warehouse.duckdb") as pid:
        result = runner.invoke(app, ["segments", "preview", "buyers.yaml"], env=env)
    assert result.exit_code == 1
    said = " ".join(result.output.split())  # as folded to the console's width
    assert f"in use by another process (PID {pid})" in said
    assert "POST /v1/segments/preview" in said
