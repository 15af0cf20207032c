"""The `remarket` command: serve, worker, demo and the admin chores (Typer + Rich)."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
import yaml
from rich.console import Console
from rich.table import Table

from remarket.api import ROLES, ApiKeyStore, Runtime, create_app
from remarket.api.passwords import Passwords
from remarket.api.users import UserStore
from remarket.clock import SystemClock
from remarket.collect import SourceRegistry, replay_quarantined
from remarket.config import Settings, load_settings
from remarket.errors import ConflictError, RemarketError
from remarket.privacy import AuditLog
from remarket.schema.segment import DefinitionError
from remarket.segments.backfill import sql_members
from remarket.segments.catalog import SegmentCatalog
from remarket.segments.membership import MembershipReader
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.warehouse import open_warehouse
from remarket.workers import build_workers

__all__ = ["app", "main"]

app = typer.Typer(help="remarket: self-hosted, privacy-first remarketing.", no_args_is_help=True)
db_app = typer.Typer(help="The state store.", no_args_is_help=True)
config_app = typer.Typer(help="Settings.", no_args_is_help=True)
sources_app = typer.Typer(help="Sources and their write keys.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys for the read and admin API.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Events rejected at collection.", no_args_is_help=True)
segments_app = typer.Typer(
    help="Segment definitions (as code, in YAML or JSON).", no_args_is_help=True
)
audit_app = typer.Typer(help="The hash-chained audit log.", no_args_is_help=True)
users_app = typer.Typer(help="Console users (password login).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(sources_app, name="sources")
app.add_typer(keys_app, name="keys")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(segments_app, name="segments")
app.add_typer(audit_app, name="audit")
app.add_typer(users_app, name="users")

console = Console()
err = Console(stderr=True)


def _settings() -> Settings:
    try:
        return load_settings()
    except ValueError as exc:
        err.print(f"[red]invalid settings:[/] {exc}")
        raise typer.Exit(2) from exc


def _engine(settings: Settings) -> Any:
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    return engine


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply schema migrations to the state store (the server also does this on start)."""
    settings = _settings()
    _engine(settings).dispose()
    console.print(f"state store at head: {settings.model_dump()['database_url'] or 'embedded'}")


@config_app.command("show")
def config_show() -> None:
    """Print the effective settings, secrets masked."""
    settings = _settings()
    table = Table("setting", "value", "environment variable")
    for name, value in settings.model_dump().items():
        shown = "**********" if value is not None and "url" in name else value
        table.add_row(name, json.dumps(shown, default=str), f"REMARKET_{name.upper()}")
    console.print(table)


@sources_app.command("create")
def sources_create(name: str) -> None:
    """Create a source and print its write key (shown only this once)."""
    settings = _settings()
    engine = _engine(settings)
    try:
        source, key = SourceRegistry(engine).create(name, actor="cli")
    except Exception as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from exc
    console.print(f"source {source.name} ({source.id})")
    console.print(key)


@sources_app.command("list")
def sources_list() -> None:
    """List sources (write keys by prefix)."""
    table = Table("id", "name", "write key", "enabled", "created")
    for s in SourceRegistry(_engine(_settings())).list():
        table.add_row(s.id, s.name, f"{s.write_key_prefix}…", str(s.enabled), str(s.created_at))
    console.print(table)


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")] = "admin",
    name: Annotated[str, typer.Option(help="What the key is for.")] = "cli",
) -> None:
    """Create an API key and print it (shown only this once; only its hash is kept)."""
    if role not in ROLES:
        err.print(f"[red]--role must be one of {', '.join(ROLES)}[/]")
        raise typer.Exit(2)
    _, secret = ApiKeyStore(_engine(_settings())).create(name, role)
    console.print(secret)


@quarantine_app.command("list")
def quarantine_list(
    limit: int = 50, include_replayed: Annotated[bool, typer.Option()] = False
) -> None:
    """List quarantined events with their reasons."""
    from remarket.collect import QuarantineStore

    entries = QuarantineStore(_engine(_settings())).list(
        pending_only=not include_replayed, limit=limit
    )
    table = Table("id", "received", "reason", "field", "detail")
    for e in entries:
        table.add_row(str(e.id), str(e.received_at), e.reason, e.field or "", e.detail)
    console.print(table)


@quarantine_app.command("replay")
def quarantine_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Entry ids; none means all.")] = None,
) -> None:
    """Send quarantined events through the pipeline again."""
    settings = _settings()

    async def replay() -> tuple[list[int], int]:
        runtime = await Runtime.start(settings, workers=False)
        try:
            pending = runtime.quarantine.list(limit=1_000_000)
            if ids:
                pending = [e for e in pending if e.id in set(ids)]
            result = await replay_quarantined(
                runtime.collector,
                runtime.quarantine,
                runtime.sources,
                pending,
                runtime.clock.now(),
                actor="cli",
            )
            return result.replayed, len(result.still_invalid)
        finally:
            await runtime.stop()

    done, still = asyncio.run(replay())
    console.print(f"replayed {len(done)}; still invalid {still}")


def _definitions(path: Path) -> list[Any]:
    """The definitions in a YAML or JSON file: one, a list, or ``{segments: [...]}``."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]cannot read {path}:[/] {exc}")
        raise typer.Exit(2) from exc
    if isinstance(data, dict) and isinstance(data.get("segments"), list):
        data = data["segments"]
    return data if isinstance(data, list) else [data]


def _invalid(where: str, exc: RemarketError) -> typer.Exit:
    if isinstance(exc, DefinitionError):
        for path, message in exc.errors:
            err.print(f"[red]{where}: {path or '(root)'}:[/] {message}")
    else:
        err.print(f"[red]{where}:[/] {exc.detail}")
    return typer.Exit(1)


@segments_app.command("apply")
def segments_apply(
    file: Annotated[Path, typer.Argument(help="segments.yaml: definitions as code.")],
) -> None:
    """Create or update the segments in FILE; unchanged ones make no new version."""
    catalog = SegmentCatalog(_engine(_settings()))
    table = Table("segment", "version", "result")
    for index, data in enumerate(_definitions(file)):
        name = data.get("name") if isinstance(data, dict) else None
        try:
            info, changed = catalog.save(data, actor="cli")
        except (DefinitionError, ConflictError) as exc:
            raise _invalid(f"{file}[{index}] {name or ''}".strip(), exc) from exc
        table.add_row(info.name, str(info.version), "new version" if changed else "unchanged")
    console.print(table)


@segments_app.command("preview")
def segments_preview(
    file: Annotated[Path, typer.Argument(help="A file with one segment definition.")],
) -> None:
    """Size and 20 sample members of the definition in FILE, by SQL now; nothing saved.

    Reads the warehouse directly: an embedded DuckDB warehouse is locked while the
    server runs (use POST /v1/segments/preview then).
    """
    settings = _settings()
    catalog = SegmentCatalog(_engine(settings))
    definitions = _definitions(file)
    try:
        core = catalog.compile(catalog.parse(definitions[0]))
    except DefinitionError as exc:
        raise _invalid(str(file), exc) from exc
    warehouse = open_warehouse(settings)
    try:
        members = sorted(sql_members(warehouse, core, SystemClock().now()))
    finally:
        warehouse.close()
    console.print(f"{core.name}: {len(members)} members")
    for profile_id in members[:20]:
        console.print(f"  {profile_id}")


@segments_app.command("list")
def segments_list() -> None:
    """Segments with their version, status and size."""
    engine = _engine(_settings())
    reader = MembershipReader(engine)
    table = Table("segment", "version", "live version", "status", "size", "updated")
    for info in SegmentCatalog(engine).all():
        table.add_row(
            info.name,
            str(info.version),
            str(info.live_version or ""),
            info.status,
            str(reader.size(info.name)),
            str(info.updated_at),
        )
    console.print(table)


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the audit chain; exit 1 naming the first altered, removed, reordered or
    inserted entry."""
    audit = AuditLog(_engine(_settings()))
    problem = audit.verify()
    if problem is not None:
        err.print(f"[red]audit chain broken at entry {problem.seq}:[/] {problem.reason}")
        raise typer.Exit(1)
    seq, digest = audit.head()
    console.print(f"audit chain intact: {seq} entries, head {digest}")


@audit_app.command("list")
def audit_list(
    after: Annotated[int, typer.Option(min=0, help="Show entries after this number.")] = 0,
    limit: Annotated[int, typer.Option(min=1, help="How many entries.")] = 50,
) -> None:
    """Audit entries, oldest first."""
    table = Table("seq", "at", "actor", "action", "target", "details")
    for e in AuditLog(_engine(_settings())).entries(after=after, limit=limit):
        table.add_row(str(e.seq), str(e.at), e.actor, e.action, e.target, e.details)
    console.print(table)


def _users() -> UserStore:
    settings = _settings()
    return UserStore(_engine(settings), Passwords.of(settings))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return password


def _user_id(users: UserStore, email: str) -> str:
    found = users.credentials(email)
    if found is None:
        err.print(f"[red]no user {email}[/]")
        raise typer.Exit(1)
    return found[0].id


_PASSWORD_STDIN = typer.Option(
    "--password-stdin", help="Read the password from the first line of standard input."
)


@users_app.command("create")
def users_create(
    email: str,
    role: Annotated[str, typer.Option(help=f"One of {', '.join(ROLES)}.")],
    password_stdin: Annotated[bool, _PASSWORD_STDIN] = False,
) -> None:
    """Create a console user (the password is asked for, or read with --password-stdin)."""
    if role not in ROLES:
        err.print(f"[red]--role must be one of {', '.join(ROLES)}[/]")
        raise typer.Exit(2)
    users = _users()
    try:
        user = users.create(email, role, _password(password_stdin), actor="cli")
    except RemarketError as exc:
        err.print(f"[red]{exc.field}: {exc.detail}[/]")
        raise typer.Exit(1) from exc
    console.print(f"user {user.email} ({user.id}), role {user.role}")


@users_app.command("list")
def users_list() -> None:
    """Console users and their roles."""
    table = Table("id", "email", "role", "created")
    for u in _users().list():
        table.add_row(u.id, u.email, u.role, str(u.created_at))
    console.print(table)


@users_app.command("password")
def users_password(email: str, password_stdin: Annotated[bool, _PASSWORD_STDIN] = False) -> None:
    """Set a user's password (ends their sessions)."""
    users = _users()
    user_id = _user_id(users, email)
    try:
        users.update(user_id, actor="cli", password=_password(password_stdin))
    except RemarketError as exc:
        err.print(f"[red]{exc.field}: {exc.detail}[/]")
        raise typer.Exit(1) from exc
    console.print(f"password of {email} changed; their sessions ended")


@users_app.command("delete")
def users_delete(email: str) -> None:
    """Delete a user and their sessions (not the last admin)."""
    users = _users()
    try:
        users.delete(_user_id(users, email), actor="cli")
    except RemarketError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    console.print(f"deleted {email}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address.")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port.")] = None,
    workers: Annotated[bool, typer.Option(help="Run the workers in this process.")] = True,
) -> None:
    """Run the API and (by default) the workers in one process."""
    settings = _settings()
    uvicorn.run(
        create_app(settings, workers=workers),
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level="info",
        access_log=False,
    )


@app.command()
def worker() -> None:
    """Run only the workers (scale-out: the API runs elsewhere)."""
    settings = _settings()
    engine = _engine(settings)
    warehouse = open_warehouse(settings)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    async def run() -> None:
        workers = await build_workers(settings, engine, warehouse)
        try:
            await workers.run(stop)
        finally:
            await workers.log.close()

    console.print("workers running; Ctrl+C to stop")
    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        stop.set()
    finally:
        warehouse.close()


def _free_port(host: str, wanted: int) -> int:
    with socket.socket() as s:
        try:
            s.bind((host, wanted))
        except OSError:
            s.bind((host, 0))
        return int(s.getsockname()[1])


@app.command()
def demo(
    visitors: Annotated[int, typer.Option(min=1, help="Synthetic visitors to send.")] = 3000,
    seed: Annotated[int | None, typer.Option(help="Same seed, same traffic.")] = None,
    serve_after: Annotated[
        bool, typer.Option("--serve/--no-serve", help="Keep the server running afterwards.")
    ] = True,
) -> None:
    """Start the server, send a synthetic shop's traffic through the HTTP API, show it."""
    from remarket.sim import run_demo

    settings = _settings()
    _, api_key = ApiKeyStore(_engine(settings)).create("demo", "admin")
    port = _free_port(settings.host, settings.port)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host=settings.host, port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, name="remarket-demo-server", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            err.print("[red]the server did not start[/]")
            raise typer.Exit(1)
        time.sleep(0.05)
    url = f"http://{settings.host}:{port}"
    console.print(f"remarket is up at [bold]{url}[/] (data in {settings.data_dir}/)")
    try:
        run_demo(url, api_key, visitors=visitors, seed=seed, console=console)
        if serve_after:
            console.print(f"\nAPI docs: {url}/docs   admin API key: {api_key}")
            console.print("Serving; Ctrl+C to stop.")
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(30)


def main() -> None:
    app()
