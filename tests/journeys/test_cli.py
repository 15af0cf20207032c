"""`remarket journeys apply | list`: definitions as code, idempotent."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from remarket.cli import app
from remarket.privacy import AuditLog
from remarket.storage.state import connect_state

runner = CliRunner()

JOURNEYS_YAML = """
journeys:
  - id: cart-abandonment
    entry: {type: event, event: Product Added}
    exit_when: [{event: Order Completed}]
    start: wait
    nodes:
      - {id: wait, type: wait, duration: 1h, next: mail}
      - {id: mail, type: send, channel: email, template: cart-reminder}
  - id: welcome
    entry: {type: segment_entered, segment: new-customers}
    start: mail
    nodes:
      - {id: mail, type: send, channel: email, template: welcome}
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {"REMARKET_DATA_DIR": str(tmp_path / "var"), "COLUMNS": "200"}


def test_apply_is_idempotent_and_audited(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "journeys.yaml").write_text(JOURNEYS_YAML)
    first = runner.invoke(app, ["journeys", "apply", "journeys.yaml", "--activate"], env=env)
    assert first.exit_code == 0, first.output
    assert first.output.count("new version") == 2 and first.output.count("active") == 2
    again = runner.invoke(app, ["journeys", "apply", "journeys.yaml"], env=env)
    assert again.exit_code == 0 and again.output.count("unchanged") == 2
    (tmp_path / "journeys.yaml").write_text(JOURNEYS_YAML.replace("1h", "2h"))
    edited = runner.invoke(app, ["journeys", "apply", "journeys.yaml"], env=env)
    assert edited.output.count("unchanged") == 1 and "new version" in edited.output
    listed = runner.invoke(app, ["journeys", "list"], env=env)
    assert "cart-abandonment" in listed.output and "welcome" in listed.output
    engine = connect_state(f"sqlite:///{tmp_path / 'var' / 'state.db'}")
    actions = [e.action for e in AuditLog(engine).entries(limit=100)]
    engine.dispose()
    assert actions.count("journey.create") == 2
    assert actions.count("journey.activate") == 2
    assert actions.count("journey.update") == 1


def test_apply_reports_the_bad_node(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text(
        JOURNEYS_YAML.replace("channel: email, template: welcome", "channel: fax, template: w")
    )
    result = runner.invoke(app, ["journeys", "apply", "bad.yaml"], env=env)
    assert result.exit_code == 1
    assert "nodes[0].channel" in result.output
    # The valid journey before it is not applied either: a file applies whole or not.
    assert "nothing applied" in result.output
    assert "cart-abandonment" not in runner.invoke(app, ["journeys", "list"], env=env).output
