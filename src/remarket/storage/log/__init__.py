"""Append-only event log with consumer offsets: embedded SQLite or NATS JetStream."""

from __future__ import annotations

from remarket.storage.log.base import EventLog, LogEntry, LogRecord
from remarket.storage.log.factory import open_log
from remarket.storage.log.sqlite import SQLiteLog

__all__ = ["EventLog", "LogEntry", "LogRecord", "SQLiteLog", "open_log"]
