"""Worker throughput: the runner of `remarket serve` moving an embedded SQLite log into the
DuckDB warehouse and the SQLite profile store, against reading and decoding the same log
records (what any consumer pays before doing anything), in the same run.

The log is filled first through `remarket.collect.Collector` (validate, dedupe, enrich,
seal, append; fsync off since filling is not measured) with a synthetic shop's traffic
(`remarket.sim.Shop`: many anonymous visitors, about a third identify, some on two
devices so profiles merge). Events are sealed under per-device keys as `remarket serve`
seals them by default (PII encryption on), and every phase starts with a copy of those
keys, so the workers open each event as they would in production; `--plain` fills the
log unsealed (encryption off; what this benchmark measured before session 9). Then each
consumer set drains the whole log into empty stores:

  read          `SQLiteLog.read_sync` in batches of `worker_batch_size`
  read+decode   the same plus `decode_log_message` per record (the baseline)
  both sinks    `build_runner` (warehouse + profiles), as the server runs it (the target)
  warehouse     the warehouse sink alone
  profiles      the profile sink alone (it mirrors identity changes into the warehouse)
  profiles (no mirror)   the profile store alone, to split the mirror's cost out
  one process   `remarket serve`'s worker child (`WorkerProcess`), every sink
  two processes the same with ``REMARKET_WORKER_SPLIT``: the warehouse's part and the
                people's part in two children (the people's part mirrors identities
                into the warehouse through the first)

The worker-process phases are timed from their progress (the slower of the warehouse's
and the profiles' offsets) between 10 % and 90 % of the log, so that starting Python
in the children is not counted; CPU is the children's over the same stretch.

Every consumer runs ``--rounds`` times (default 3), the rounds alternating between the
consumers, and each figure is the median round with the range beside it: run to run, this
shared machine moves one phase by a quarter within minutes.

    .venv/bin/python benchmarks/workers.py [--quick] [--events N] [--rounds N] [--plain]
        [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from pydantic import SecretStr

import common
from remarket.collect import SourceRegistry
from remarket.config import Settings
from remarket.privacy.keyring import Keyring
from remarket.privacy.seal import Opener
from remarket.profiles import ProfileStore
from remarket.schema.events import Batch, decode_log_message
from remarket.sim import Shop
from remarket.storage.log import EventLog, LogRecord, SQLiteLog
from remarket.storage.state import connect_state, upgrade_state
from remarket.storage.warehouse import open_warehouse
from remarket.workers import (
    ProfilesSink,
    Runner,
    Sink,
    WarehouseSink,
    WorkerProcess,
    build_runner,
)

TARGETS: Final[dict[str, float]] = {"both_sinks_events_per_s": 100_000}
_KEYS: Final = "state.keys.db"
_REQUEST: Final = 100
_PROCESS_PHASES: Final = {
    "one_process": ("one_process", "one worker process", False),
    "two_processes": ("two_processes", "two worker processes (split)", True),
}


@dataclass
class Phase:
    key: str
    label: str
    events: int
    seconds: float
    cpu_seconds: float
    complete: bool = True

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def cpu_rate(self) -> float:
        """Events per CPU second of the whole process (every thread): steadier than the
        wall-clock rate on a shared machine."""
        return self.events / self.cpu_seconds if self.cpu_seconds else 0.0


# -- filling the log -------------------------------------------------------------


async def fill(log_dir: Path, events: int, seed: int, *, sealed: bool) -> int:
    """Append ``events`` shop events to ``log_dir/log.db`` through the collector (sealed
    under keys in ``log_dir/state.keys.db``, or not)."""
    settings = Settings(data_dir=log_dir, log_fsync="off")
    engine = connect_state(settings.resolved_database_url())
    upgrade_state(engine)
    log = SQLiteLog(log_dir / "log.db", fsync="off")
    collector, keyring = common.sealing_collector(settings, engine, log, sealed=sealed)
    try:
        source, _ = SourceRegistry(engine).create("bench")
        shop = Shop(visitors=max(events // 4, 10), end=datetime(2026, 1, 1, tzinfo=UTC), seed=seed)
        stream = (msgspec.json.encode(e) for e in itertools.islice(shop.events(), events))
        appended = 0
        last = time.monotonic()
        while True:
            raws = [msgspec.Raw(b) for b in itertools.islice(stream, _REQUEST)]
            if not raws:
                break
            result = await collector.ingest_batch(source, Batch(batch=raws))
            if result.rejected or result.duplicates:
                raise RuntimeError(f"the shop's events were refused: {result}")
            appended += result.accepted
            if time.monotonic() - last > 5:
                common.progress(f"filling the log: {appended:,} / {events:,}")
                last = time.monotonic()
        return appended
    finally:
        await log.close()
        keyring.store.dispose()
        engine.dispose()


# -- the phases ------------------------------------------------------------------


def _read_all(log: SQLiteLog, batch: int) -> Iterator[list[LogRecord]]:
    after = 0
    while records := log.read_sync(after, batch):
        yield records
        after = records[-1].offset


def time_read(log: SQLiteLog, batch: int, *, decode: bool) -> tuple[int, float, float]:
    start, cpu = time.perf_counter(), time.process_time()
    count = 0
    for records in _read_all(log, batch):
        if decode:
            for record in records:
                decode_log_message(record.payload)
        count += len(records)
    return count, time.perf_counter() - start, time.process_time() - cpu


async def drain(
    runner: Runner, log: EventLog, label: str, timeout: float
) -> tuple[int, float, bool]:
    """Step the runner until every sink has the whole log (as `Runner.drain`, with
    progress); gives up after ``timeout`` seconds and reports what it applied."""
    end = await log.end_offset()
    start = time.perf_counter()
    last = start
    while min(runner.offsets.values()) < end:
        await runner.step()
        now = time.perf_counter()
        if now - last > 5:
            done = min(runner.offsets.values())
            common.progress(f"{label}: {done:,} / {end:,} ({done / (now - start):,.0f} events/s)")
            last = now
        if now - start > timeout:
            common.progress(f"{label}: stopped after {timeout:.0f} s")
            return min(runner.offsets.values()), now - start, False
    return end, time.perf_counter() - start, True


def _poison(record: LogRecord, reason: str) -> None:
    raise RuntimeError(f"log record {record.offset} is undecodable: {reason}")


@contextlib.contextmanager
def _stores(root: Path, name: str) -> Iterator[Settings]:
    """A phase's empty stores, with a copy of the keys the log was sealed under."""
    phase_dir = root / name
    phase_dir.mkdir()
    with (
        contextlib.closing(sqlite3.connect(root / "log" / _KEYS)) as keys,
        contextlib.closing(sqlite3.connect(phase_dir / _KEYS)) as copy,
    ):
        keys.backup(copy)
    yield Settings(data_dir=phase_dir, log_url=SecretStr(f"sqlite:///{root / 'log' / 'log.db'}"))


SinkFactory = Callable[[Settings, Any, Any], list[Sink]]


async def run_sinks(
    root: Path,
    key: str,
    label: str,
    make: SinkFactory | None,
    args: argparse.Namespace,
    profile: Path | None = None,
    *,
    round_: int = 0,
) -> tuple[Phase, dict[str, int]]:
    """Drain the log into fresh stores with the sinks ``make`` builds (None: build_runner)."""
    with _stores(root, f"{key}-{round_}") as settings:
        engine = connect_state(settings.resolved_database_url())
        upgrade_state(engine)
        warehouse = open_warehouse(settings)
        log: EventLog
        if make is None:
            runner, log = await build_runner(settings, engine, warehouse)
        else:
            log = SQLiteLog(root / "log" / "log.db", fsync="off")
            sinks = make(settings, engine, warehouse)
            runner = Runner(
                log,
                sinks,
                on_poison=_poison,
                batch_size=settings.worker_batch_size,
                unseal=Opener(Keyring(engine)),
            )
        # As `remarket worker` and `remarket serve` do after start-up.
        gc.collect()
        gc.freeze()
        try:
            common.progress(f"{label}: draining")
            cm = common.py_spy(os.getpid(), profile) if profile else contextlib.nullcontext()
            cpu = time.process_time()
            with cm:
                events, seconds, complete = await drain(runner, log, label, args.phase_timeout)
            cpu_seconds = time.process_time() - cpu
            counts = {
                "warehouse_events": warehouse.count_events(),
                "profiles": ProfileStore(engine).count(),
            }
        finally:
            gc.unfreeze()
            await log.close()
            warehouse.close()
            engine.dispose()
    phase = Phase(key, label, events, seconds, cpu_seconds, complete)
    common.progress(f"{label}: {phase.rate:,.0f} events/s, {phase.cpu_rate:,.0f} per CPU s")
    return phase, counts


def _offsets(engine: Any, warehouse: Any) -> int:
    """How far both the warehouse and the profiles are."""
    return int(min(warehouse.committed("warehouse"), ProfileStore(engine).committed("profiles")))


def run_processes(
    root: Path,
    key: str,
    label: str,
    split: bool,
    end: int,
    args: argparse.Namespace,
    *,
    round_: int = 0,
) -> tuple[Phase, dict[str, int]]:
    """Drain the log with `remarket serve`'s worker child(ren) into fresh stores."""
    with _stores(root, f"{key}-{round_}") as base:
        settings = base.model_copy(update={"worker_split": split})
        engine = connect_state(settings.resolved_database_url())
        upgrade_state(engine)
        low, high = end // 10, end - end // 10
        process = WorkerProcess(settings)
        common.progress(f"{label}: starting")
        warehouse = process.start()
        marks: dict[str, tuple[float, float, int]] = {}
        children: dict[str, list[float]] = {}
        complete = True
        try:
            started = time.perf_counter()
            while True:
                done = _offsets(engine, warehouse)
                now = time.perf_counter()
                for name, threshold in (("low", low), ("high", high)):
                    if name not in marks and done >= threshold:
                        each = [common.cpu_seconds(pid) for pid in process.pids]
                        marks[name] = (now, sum(each), done)
                        children[name] = each
                if done >= end:
                    break
                if now - started > args.phase_timeout:
                    common.progress(f"{label}: stopped after {args.phase_timeout:.0f} s")
                    complete = False
                    break
                time.sleep(0.02)
            counts = {"warehouse_events": warehouse.count_events()}
        finally:
            process.stop()
            warehouse.close()
        counts["profiles"] = ProfileStore(engine).count()
        engine.dispose()
    if "low" not in marks or "high" not in marks:
        raise RuntimeError(f"{label}: the log is too small to time (--events)")
    (t0, c0, e0), (t1, c1, e1) = marks["low"], marks["high"]
    phase = Phase(key, label, e1 - e0, t1 - t0, c1 - c0, complete)
    busy = ", ".join(
        f"{(b - a) / (t1 - t0):.0%}" for a, b in zip(children["low"], children["high"], strict=True)
    )
    common.progress(
        f"{label}: {phase.rate:,.0f} events/s, {phase.cpu_rate:,.0f} per CPU s; "
        f"each child busy {busy} of the time"
    )
    return phase, counts


def _warehouse_only(settings: Settings, engine: Any, warehouse: Any) -> list[Sink]:
    return [WarehouseSink(warehouse)]


def _profiles_only(settings: Settings, engine: Any, warehouse: Any) -> list[Sink]:
    return [ProfilesSink(ProfileStore(engine), warehouse)]


def _profiles_no_mirror(settings: Settings, engine: Any, warehouse: Any) -> list[Sink]:
    return [ProfilesSink(ProfileStore(engine), None)]


async def measure(args: argparse.Namespace, root: Path) -> tuple[list[Phase], dict[str, Any]]:
    (root / "log").mkdir()
    common.progress(f"filling the log with {args.events:,} shop events")
    start = time.perf_counter()
    total = await fill(root / "log", args.events, args.seed, sealed=not args.plain)
    common.progress(f"filled: {total:,} events in {time.perf_counter() - start:.1f} s")

    log = SQLiteLog(root / "log" / "log.db", fsync="off")
    batch = Settings().worker_batch_size
    phases: list[Phase] = []
    try:
        time_read(log, batch, decode=False)  # warm the page cache: every phase reads warm
        for decode, key, label in ((False, "read", "read"), (True, "decode", "read+decode")):
            count, seconds, cpu_seconds = time_read(log, batch, decode=decode)
            phases.append(Phase(key, label, count, seconds, cpu_seconds))
            common.progress(f"{label}: {count / seconds:,.0f} events/s")
    finally:
        await log.close()

    profile_dir = common.BENCH_DIR / "out" / "workers-profile" if args.profile else None
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
    factories: list[tuple[str, str, SinkFactory | None]] = [
        ("both_sinks", "both sinks (build_runner)", None),
        ("warehouse", "warehouse only", _warehouse_only),
        ("profiles", "profiles only", _profiles_only),
        ("profiles_no_mirror", "profiles, no warehouse mirror", _profiles_no_mirror),
    ]
    facts: dict[str, Any] = {"events": total}
    stores: dict[str, set[tuple[int, int]]] = {}
    # Rounds alternate the consumers, so that a slow minute of a shared machine falls on
    # all of them; each figure is the median round.
    for round_ in range(args.rounds):
        if args.rounds > 1:
            common.progress(f"round {round_ + 1} of {args.rounds}")
        for key, label, make in factories:
            profile = profile_dir / f"{key}.collapsed" if profile_dir and not round_ else None
            phase, counts = await run_sinks(root, key, label, make, args, profile, round_=round_)
            phases.append(phase)
            stores.setdefault(key, set()).add((counts["warehouse_events"], counts["profiles"]))
        for key, label, split in _PROCESS_PHASES.values():
            phase, counts = run_processes(root, key, label, split, total, args, round_=round_)
            phases.append(phase)
            stores.setdefault(key, set()).add((counts["warehouse_events"], counts["profiles"]))
    for key in ("both_sinks", *_PROCESS_PHASES):
        # What the stores held, if every round left the same (else None: a mismatch).
        (warehouse_events, profiles), *others = stores[key]
        facts[f"{key}_warehouse_events"] = None if others else warehouse_events
        facts[f"{key}_profiles"] = None if others else profiles
    facts["load"] = [round(x, 2) for x in os.getloadavg()]
    return phases, facts


def _medians(phases: list[Phase]) -> list[tuple[Phase, float, float]]:
    """Each consumer's median round (the lower middle one of an even count) with its
    lowest and highest rate, in the order the consumers first ran."""
    runs: dict[str, list[Phase]] = {}
    for phase in phases:
        runs.setdefault(phase.key, []).append(phase)
    medians = []
    for each in runs.values():
        ranked = sorted(each, key=lambda p: p.rate)
        medians.append((ranked[(len(ranked) - 1) // 2], ranked[0].rate, ranked[-1].rate))
    return medians


def report(phases: list[Phase], facts: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    medians = _medians(phases)
    by_key = {p.key: p for p, _, _ in medians}
    baseline = by_key["decode"]
    rows = [
        [
            p.label,
            p.events,
            p.seconds,
            p.rate,
            f"{low:,.0f}-{high:,.0f}" if high > low else "",
            p.cpu_seconds,
            p.cpu_rate,
            p.rate / baseline.rate,
            "yes" if p.complete else "NO (timeout)",
        ]
        for p, low, high in medians
    ]
    print(
        f"\nWorkers: {facts['events']:,} shop events "
        f"({'unsealed' if args.plain else 'sealed, as collect seals them by default'}), "
        "SQLite log -> DuckDB warehouse + SQLite profiles, empty stores\n"
    )
    print(
        common.table(
            [
                "consumer",
                "events",
                "seconds",
                "events/s",
                f"range of {args.rounds} rounds",
                "CPU s",
                "events/CPU s",
                "vs read+decode",
                "complete",
            ],
            rows,
        )
    )
    if args.profile:
        print("\n(profiled with py-spy: figures above are disturbed by the sampler)")
        for p, _, _ in medians[2:]:
            if p.key in _PROCESS_PHASES:
                continue  # not sampled: the sinks run in child processes
            own, _ = common.top_frames(
                common.BENCH_DIR / "out" / "workers-profile" / f"{p.key}.collapsed", 12
            )
            print(f"\n{p.label}: top self time (all threads)")
            for frame, share in own:
                print(f"  {share:6.1%}  {frame}")
    print(f"\nload average (1, 5, 15 min) at the end: {facts['load']}\n")
    figures: dict[str, Any] = {"events": facts["events"], "load_average": facts["load"]}
    figures["sealed"] = not args.plain
    figures["rounds"] = args.rounds
    for p, low, high in medians:
        figures[f"{p.key}_events_per_s"] = round(p.rate)
        figures[f"{p.key}_events_per_s_min"] = round(low)
        figures[f"{p.key}_events_per_s_max"] = round(high)
        figures[f"{p.key}_seconds"] = round(p.seconds, 2)
        figures[f"{p.key}_cpu_seconds"] = round(p.cpu_seconds, 2)
    both = by_key["both_sinks"]
    figures["both_sinks_ratio_to_decode"] = round(both.rate / baseline.rate, 3)
    figures["both_sinks_complete"] = all(p.complete for p in phases)
    for key in ("both_sinks", "one_process", "two_processes"):
        figures[f"{key}_warehouse_events"] = facts[f"{key}_warehouse_events"]
        figures[f"{key}_profiles"] = facts[f"{key}_profiles"]
    figures["two_processes_ratio_to_one"] = round(
        by_key["two_processes"].rate / by_key["one_process"].rate, 3
    )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50k events instead of 500k")
    parser.add_argument(
        "--plain", action="store_true", help="fill the log unsealed (PII encryption off)"
    )
    parser.add_argument("--events", type=int, help="events to put in the log")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds of every consumer, alternated; each figure is the median (--quick: 1)",
    )
    parser.add_argument(
        "--phase-timeout", type=float, default=120.0, help="stop a consumer after this"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy each sink phase (benchmarks/out/)"
    )
    args = parser.parse_args()
    args.events = args.events or (50_000 if args.quick else 500_000)
    if args.quick:
        args.phase_timeout = min(args.phase_timeout, 20.0)
        args.rounds = 1
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    with common.tmp_dir("workers") as root:
        phases, facts = asyncio.run(measure(args, root))
    figures = report(phases, facts, args)
    # Every deployment leaves the same stores: each event in the warehouse once, the
    # same profiles.
    same = all(
        figures[f"{key}_warehouse_events"] == figures["events"]
        and figures[f"{key}_profiles"] == figures["both_sinks_profiles"]
        for key in ("both_sinks", *_PROCESS_PHASES)
    )
    if not same:
        common.progress("the deployments left different stores: see the figures")
    met = (
        figures["both_sinks_events_per_s"] >= TARGETS["both_sinks_events_per_s"]
        and figures["both_sinks_complete"]
        and same
    )
    common.final_line("workers", figures, TARGETS, met)
    return 0


if __name__ == "__main__":
    sys.exit(main())
