"""Consumers that move events from the log into the warehouse, profiles and later modules."""

from __future__ import annotations

from remarket.workers.runner import Runner
from remarket.workers.service import WorkerThread, build_runner
from remarket.workers.sinks import ProfilesSink, Sink, WarehouseSink

__all__ = ["ProfilesSink", "Runner", "Sink", "WarehouseSink", "WorkerThread", "build_runner"]
