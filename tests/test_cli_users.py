"""`remarket users`: create (password prompted or from stdin), list, password, delete."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from remarket.api.passwords import Passwords
from remarket.api.users import UserStore
from remarket.cli import app
from remarket.privacy import AuditLog
from remarket.storage.state import connect_state

runner = CliRunner()
PASSWORD = "correct horse battery staple"


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(tmp_path)
    return {
        "REMARKET_DATA_DIR": str(tmp_path / "var"),
        "REMARKET_PASSWORD_TIME_COST": "1",
        "REMARKET_PASSWORD_MEMORY_KIB": "1024",
        "COLUMNS": "200",
    }


def _store(env: dict[str, str]) -> UserStore:
    engine = connect_state(f"sqlite:///{env['REMARKET_DATA_DIR']}/state.db")
    return UserStore(engine, Passwords(time_cost=1, memory_kib=1024))


def test_create_reads_the_password_from_stdin(env: dict[str, str]) -> None:
    created = runner.invoke(
        app,
        ["users", "create", "Ann@Example.com", "--role", "admin", "--password-stdin"],
        input=PASSWORD + "\n",
        env=env,
    )
    assert created.exit_code == 0, created.output
    assert "ann@example.com" in created.output and PASSWORD not in created.output
    store = _store(env)
    found = store.credentials("ann@example.com")
    assert found is not None and found[0].role == "admin"
    assert found[1].startswith("$argon2id$") and PASSWORD not in found[1]
    listed = runner.invoke(app, ["users", "list"], env=env)
    assert "ann@example.com" in listed.output and "admin" in listed.output


def test_create_prompts_twice_for_the_password(env: dict[str, str]) -> None:
    created = runner.invoke(
        app,
        ["users", "create", "bob@example.com", "--role", "viewer"],
        input=f"{PASSWORD}\n{PASSWORD}\n",
        env=env,
    )
    assert created.exit_code == 0, created.output
    assert PASSWORD not in created.output
    assert _store(env).credentials("bob@example.com") is not None


@pytest.mark.parametrize(
    ("args", "stdin", "code", "says"),
    [
        (["--role", "root"], PASSWORD, 2, "--role must be one of"),
        (["--role", "viewer"], "short", 1, "password"),
    ],
    ids=["unknown-role", "short-password"],
)
def test_create_refuses_bad_input(
    env: dict[str, str], args: list[str], stdin: str, code: int, says: str
) -> None:
    result = runner.invoke(
        app,
        ["users", "create", "cy@example.com", *args, "--password-stdin"],
        input=stdin + "\n",
        env=env,
    )
    assert result.exit_code == code
    assert says in result.output


def test_password_reset_and_delete_are_audited_and_keep_an_admin(env: dict[str, str]) -> None:
    for email, role in (("ann@example.com", "admin"), ("bob@example.com", "viewer")):
        runner.invoke(
            app,
            ["users", "create", email, "--role", role, "--password-stdin"],
            input=PASSWORD + "\n",
            env=env,
        )
    reset = runner.invoke(
        app,
        ["users", "password", "bob@example.com", "--password-stdin"],
        input="another long passphrase\n",
        env=env,
    )
    assert reset.exit_code == 0, reset.output
    store = _store(env)
    bob = store.credentials("bob@example.com")
    assert bob is not None
    assert Passwords().verify(bob[1], "another long passphrase")
    last_admin = runner.invoke(app, ["users", "delete", "ann@example.com"], env=env)
    assert last_admin.exit_code == 1 and "last admin" in last_admin.output
    assert runner.invoke(app, ["users", "delete", "bob@example.com"], env=env).exit_code == 0
    assert store.credentials("bob@example.com") is None
    missing = runner.invoke(app, ["users", "delete", "bob@example.com"], env=env)
    assert missing.exit_code == 1 and "no user" in missing.output
    entries = AuditLog(connect_state(f"sqlite:///{env['REMARKET_DATA_DIR']}/state.db")).entries()
    assert [(e.actor, e.action) for e in entries] == [
        ("cli", "user.create"),
        ("cli", "user.create"),
        ("cli", "user.password"),
        ("cli", "user.delete"),
    ]
