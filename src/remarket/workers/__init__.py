"""Consumers that move events from the log into the warehouse, profiles and later modules."""

from __future__ import annotations

from remarket.workers.process import WorkerProcess, check_part, run_worker_process, run_workers
from remarket.workers.runner import Runner
from remarket.workers.service import (
    WorkerPart,
    Workers,
    WorkerThread,
    build_runner,
    build_workers,
)
from remarket.workers.sinks import ProfilesSink, Sink, WarehouseSink

__all__ = [
    "ProfilesSink",
    "Runner",
    "Sink",
    "WarehouseSink",
    "WorkerPart",
    "WorkerProcess",
    "WorkerThread",
    "Workers",
    "build_runner",
    "build_workers",
    "check_part",
    "run_worker_process",
    "run_workers",
]
