"""The `remarket` command: serve, worker, demo and the admin chores (Typer + Rich)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
import yaml
from rich.console import Console
from rich.table import Table

from remarket.api import ROLES, ApiKeyStore, Runtime, WorkersMode, create_app
from remarket.api.erasure import subject_for_value
from remarket.api.passwords import Passwords
from remarket.api.users import UserStore
from remarket.channels.removals import AudienceRemovals
from remarket.clock import SystemClock
from remarket.collect import SourceRegistry, replay_quarantined
from remarket.config import Settings, load_settings, reference_table
from remarket.errors import ConflictError, RemarketError, StorageError
from remarket.journeys import JourneyCatalog
from remarket.privacy import AuditLog, RetentionJob, RetentionReport, RetentionRules
from remarket.privacy.erasers import compact_after_erasures, needles, scan_log
from remarket.privacy.export import export_document
from remarket.privacy.keyring import Keyring
from remarket.privacy.rights import Rights, build_rights
from remarket.schema.journey import parse_journey
from remarket.schema.segment import DefinitionError, parse_segment
from remarket.segments.backfill import sql_members
from remarket.segments.catalog import SegmentCatalog
from remarket.segments.membership import MembershipReader
from remarket.storage.log import open_log
from remarket.storage.log.owner import LogOwner
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.warehouse import Warehouse, open_warehouse
from remarket.workers import WorkerPart, check_part, run_worker_process, run_workers

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
journeys_app = typer.Typer(
    help="Journey definitions (as code, in YAML or JSON).", no_args_is_help=True
)
privacy_app = typer.Typer(help="Data-subject rights: erasure and export.", no_args_is_help=True)
retention_app = typer.Typer(help="How long events are kept.", no_args_is_help=True)
users_app = typer.Typer(help="Console users (password login).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(config_app, name="config")
app.add_typer(sources_app, name="sources")
app.add_typer(keys_app, name="keys")
app.add_typer(quarantine_app, name="quarantine")
app.add_typer(segments_app, name="segments")
app.add_typer(audit_app, name="audit")
app.add_typer(journeys_app, name="journeys")
app.add_typer(privacy_app, name="privacy")
app.add_typer(retention_app, name="retention")
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


def _warehouse(settings: Settings, *, instead: str) -> Warehouse:
    """The warehouse, for a command that reads or changes it directly; if a running
    server holds it (an embedded DuckDB file has one opener), say what to do ``instead``."""
    try:
        return open_warehouse(settings)
    except StorageError as exc:
        err.print(f"[red]{exc.detail}[/]")
        err.print(f"Stop it first, or {instead}.")
        raise typer.Exit(1) from exc


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


@config_app.command("reference")
def config_reference() -> None:
    """Print every setting, its default and meaning, as a Markdown table."""
    typer.echo(reference_table(), nl=False)


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
        runtime = await Runtime.start(settings, workers="none")
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


def _definitions(path: Path, key: str = "segments") -> list[Any]:
    """The definitions in a YAML or JSON file: one, a list, or ``{<key>: [...]}``."""
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        err.print(f"[red]cannot read {path}:[/] {exc}")
        raise typer.Exit(2) from exc
    if isinstance(data, dict) and isinstance(data.get(key), list):
        data = data[key]
    return data if isinstance(data, list) else [data]


def _places(file: Path, items: list[Any], key: str) -> list[str]:
    """Where each definition of a file is, for messages: ``file[index] name``."""
    names = [data.get(key) if isinstance(data, dict) else None for data in items]
    return [f"{file}[{i}] {name or ''}".strip() for i, name in enumerate(names)]


def _all_valid(items: list[Any], places: list[str], parse: Callable[[object], object]) -> None:
    """Check every definition of a file before any is saved: all the bad ones are
    reported, and then nothing is applied."""
    bad = False
    for data, where in zip(items, places, strict=True):
        try:
            parse(data)
        except DefinitionError as exc:
            _invalid(where, exc)
            bad = True
    if bad:
        err.print("nothing applied")
        raise typer.Exit(1)


def _stopped(table: Table, where: str, exc: RemarketError) -> typer.Exit:
    """A definition refused while saving (a reference, a conflict): what was applied
    before it, then why."""
    if table.row_count:
        console.print(table)
    return _invalid(where, exc)


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
    items = _definitions(file)
    places = _places(file, items, "name")
    _all_valid(items, places, parse_segment)
    for data, where in zip(items, places, strict=True):
        try:
            info, changed = catalog.save(data, actor="cli")
        except (DefinitionError, ConflictError) as exc:
            raise _stopped(table, where, exc) from exc
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
    warehouse = _warehouse(settings, instead="use POST /v1/segments/preview on the server")
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


@journeys_app.command("apply")
def journeys_apply(
    file: Annotated[Path, typer.Argument(help="journeys.yaml: definitions as code.")],
    activate: Annotated[
        bool, typer.Option("--activate", help="Also activate drafts and paused ones.")
    ] = False,
) -> None:
    """Create or update the journeys in FILE; unchanged ones make no new version.

    New journeys start as drafts; an edited active journey stays active (profiles in
    flight finish on their version).
    """
    catalog = JourneyCatalog(_engine(_settings()))
    table = Table("journey", "version", "status", "result")
    items = _definitions(file, "journeys")
    places = _places(file, items, "id")
    _all_valid(items, places, parse_journey)
    for data, where in zip(items, places, strict=True):
        try:
            info, changed = catalog.save(data, actor="cli")
            if activate and info.status in ("draft", "paused"):
                info = catalog.transition(info.id, "activate", actor="cli")
        except (DefinitionError, ConflictError) as exc:
            raise _stopped(table, where, exc) from exc
        result = "new version" if changed else "unchanged"
        table.add_row(info.id, str(info.version), info.status, result)
    console.print(table)


@journeys_app.command("list")
def journeys_list() -> None:
    """Journeys with their status and newest version."""
    table = Table("journey", "name", "status", "version", "updated")
    for info in JourneyCatalog(_engine(_settings())).all():
        table.add_row(info.id, info.name, info.status, str(info.version), str(info.updated_at))
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


def _rights(settings: Settings) -> tuple[Any, Rights, Any]:
    """(engine, rights, warehouse) for the privacy commands; close the warehouse after."""
    engine = _engine(settings)
    warehouse = _warehouse(
        settings,
        instead="use the server's API (DELETE /v1/profiles/{id}, GET /v1/profiles/{id}/export)",
    )
    compact_after_erasures(engine, warehouse)  # as the server does when it starts
    rights = build_rights(settings, engine, warehouse, Keyring(engine))
    rights.erasers.inform(AudienceRemovals(engine))
    return engine, rights, warehouse


@privacy_app.command("erase")
def privacy_erase(
    value: Annotated[str, typer.Argument(help="A profile id, user id, anonymous id or e-mail.")],
) -> None:
    """Erase the person holding VALUE from every store and destroy their keys.

    On the embedded stores, stop `remarket serve` first (the DuckDB file has one opener);
    erasing through the API (DELETE /v1/profiles/…) also sweeps what workers had in flight.
    """
    settings = _settings()
    engine, rights, warehouse = _rights(settings)
    try:
        subject = subject_for_value(rights.erasure, value)
        if not rights.erasure.known(subject):
            err.print(f"[red]no profile holds {value!r}[/]")
            raise typer.Exit(1)
        record = rights.erasure.erase(subject, "cli")
        # Nothing else has the embedded warehouse open: its file is compacted at once.
        compact_after_erasures(engine, warehouse)
    finally:
        warehouse.close()
    table = Table("store", "rows removed")
    for store, count in record.counts.items():
        table.add_row(store, str(count))
    console.print(table)
    console.print(f"erasure {record.id} recorded for profile hash {record.profile_hash}")


@privacy_app.command("verify-erased")
def privacy_verify_erased(
    value: Annotated[str, typer.Argument(help="A profile id, user id, anonymous id or e-mail.")],
) -> None:
    """Scan every store (and the whole event log, for VALUE in the clear) for what remains
    of a person; exit 1 if anything does.

    Removals from ad audiences that the erasure queued and that are not delivered yet
    (hashed identifiers only, no PII) are listed apart as pending, not as residue."""
    settings = _settings()
    _, rights, warehouse = _rights(settings)
    try:
        subject = subject_for_value(rights.erasure, value)
        residue = rights.erasure.residue(subject)
        pending = rights.erasure.pending(subject)
    finally:
        warehouse.close()

    async def scan() -> int:
        log = await open_log(settings)
        try:
            return await scan_log(log, needles(subject.profile_ids, subject.identities))
        finally:
            await log.close()

    residue["log (in the clear)"] = asyncio.run(scan())
    table = Table("store", "rows left")
    for store, count in residue.items():
        table.add_row(store, str(count))
    console.print(table)
    if any(pending.values()):
        waiting = ", ".join(f"{n} to {name}" for name, n in pending.items() if n)
        console.print(f"[yellow]pending platform removals (hashed identifiers): {waiting}[/]")
    total = sum(residue.values())
    if total:
        err.print(f"[red]{total} rows of {value!r} remain[/]")
        raise typer.Exit(1)
    console.print(f"nothing of {value!r} remains")


@privacy_app.command("export")
def privacy_export(
    profile_id: Annotated[str, typer.Argument(help="The profile id.")],
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Everything held about a profile as one JSON document (GDPR art. 15 and 20)."""
    settings = _settings()
    engine, rights, warehouse = _rights(settings)
    try:
        subject = rights.erasure.subject([profile_id])
        document = export_document(subject, rights.exporters)
    finally:
        warehouse.close()
    AuditLog(engine).record("cli", "profile.export", rights.erasure.profile_hash(subject))
    text = json.dumps(document, indent=2, default=str)
    if output is None:
        print(text)
    else:
        output.write_text(text)
        console.print(f"written to {output}")


@retention_app.command("run")
def retention_run() -> None:
    """Delete expired events from the warehouse, the quarantine and the embedded log."""
    settings = _settings()
    engine = _engine(settings)
    warehouse = _warehouse(
        settings, instead="let it run retention itself (REMARKET_RETENTION_INTERVAL_S)"
    )

    async def run() -> RetentionReport:
        log = await open_log(settings)
        try:
            return await RetentionJob(engine, warehouse, log, settings).run(actor="cli")
        finally:
            await log.close()

    try:
        report = asyncio.run(run())
    finally:
        warehouse.close()
    console.print(
        f"deleted {report.warehouse} warehouse events, {report.quarantine} quarantined, "
        f"{report.log} from the log"
    )


@retention_app.command("rules")
def retention_rules_list() -> None:
    """The retention windows in force."""
    settings = _settings()
    rules = RetentionRules(_engine(settings), default_days=settings.retention_default_days)
    table = Table("id", "source", "event type", "days")
    for rule in rules.list():
        table.add_row(str(rule.id), rule.source_id, rule.event_type, str(rule.days))
    table.add_row("-", "(default)", "", str(settings.retention_default_days or "forever"))
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
    workers: Annotated[
        WorkersMode,
        typer.Option(
            help="Where the workers run: 'process' (a child process with its own core, "
            "the default), 'thread' (inside the API process) or 'none' (run "
            "`remarket worker` elsewhere)."
        ),
    ] = "process",
) -> None:
    """Run the API and (by default) the workers."""
    settings = _settings()
    try:
        # Asked here too, so that a second server on the same data folder is told why in
        # a line (the server's own start-up would report it with a traceback).
        owner = LogOwner.of(settings)
    except StorageError as exc:
        err.print(f"[red]{exc.detail}[/]")
        raise typer.Exit(1) from exc
    if owner is not None:
        owner.release()
    server_logging()
    uvicorn.run(
        create_app(settings, workers=workers),
        host=host or settings.host,
        port=port if port is not None else settings.port,
        log_level="info",
        access_log=False,
    )


@app.command()
def worker(
    part: Annotated[
        WorkerPart,
        typer.Option(
            help="What this process runs: 'all', or one of two parts that run side by side "
            "(scale-out over cores or machines): 'events' (the warehouse sink, retention) "
            "and 'people' (profiles, segments, consent, journeys, delivery; it follows "
            "the warehouse sink, and needs a warehouse that both can open: PostgreSQL)."
        ),
    ] = "all",
    spec: Annotated[Path | None, typer.Option(hidden=True, help="Set by `serve`.")] = None,
) -> None:
    """Run only the workers (scale-out: the API runs elsewhere)."""
    try:
        if spec is not None:
            server_logging()
            run_worker_process(spec)
            return
        settings = _settings()
        try:
            check_part(settings, part)
        except ValueError as exc:
            err.print(f"[red]{exc}[/]")
            raise typer.Exit(2) from exc
        server_logging()
        console.print(f"workers ({part}) running; Ctrl+C to stop")
        run_workers(settings, part=part)
    except StorageError as exc:
        # A store it cannot open (another server's warehouse): the reason, not a traceback.
        err.print(f"[red]workers: {exc.detail}[/]")
        raise typer.Exit(1) from exc


def server_logging() -> None:
    """Show remarket's own log (INFO and up) on stderr, as uvicorn shows its own: what a
    server does at start-up (a warehouse compaction after erasures) or now and then."""
    logger = logging.getLogger("remarket")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


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


if __name__ == "__main__":
    main()
