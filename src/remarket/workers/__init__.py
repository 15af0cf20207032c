"""Consumers that move events from the log into the warehouse, profiles and later modules."""

from __future__ import annotations

from remarket.workers.process import WorkerProcess, run_worker_process, run_workers
from remarket.workers.runner import Runner
from remarket.workers.service import Workers, WorkerThread, build_runner, build_workers
from remarket.workers.sinks import ProfilesSink, Sink, WarehouseSink

__all__ = [
    "ProfilesSink",
    "Runner",
    "Sink",
    "WarehouseSink",
    "WorkerProcess",
    "WorkerThread",
    "Workers",
    "build_runner",
    "build_workers",
    "run_worker_process",
    "run_workers",
]
