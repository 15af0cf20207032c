"""Open the event log that the settings name."""

from __future__ import annotations

from pathlib import Path

from remarket.config import Settings
from remarket.storage.log.base import EventLog
from remarket.storage.log.sqlite import SQLiteLog

__all__ = ["embedded_log_path", "open_log"]

_EMBEDDED = "sqlite:///"


def embedded_log_path(settings: Settings) -> Path | None:
    """The file of the settings' log if it is the embedded SQLite one (else None)."""
    url = settings.resolved_log_url()
    return Path(url.removeprefix(_EMBEDDED)) if url.startswith(_EMBEDDED) else None


async def open_log(settings: Settings) -> EventLog:
    """The embedded SQLite log, or NATS JetStream for a ``nats://`` URL.

    Each event loop opens its own log (a NATS connection belongs to one loop).
    """
    path = embedded_log_path(settings)
    if path is not None:
        return SQLiteLog(
            path,
            fsync=settings.log_fsync,
            group_commit_max=settings.log_group_commit_max,
            poll_interval=min(settings.worker_poll_interval_s, 0.02),
        )
    url = settings.resolved_log_url()
    if url.startswith(("nats://", "tls://")):
        from remarket.storage.log.nats import NatsLog

        return await NatsLog.connect(
            url,
            stream=settings.nats_stream,
            subject_prefix=settings.nats_subject_prefix,
            partitions=settings.log_partitions,
            duplicate_window_s=settings.nats_duplicate_window_s,
            max_age_s=settings.nats_max_age_s,
        )
    raise ValueError(f"log URL must be sqlite:///PATH or nats://HOST:PORT, got {url!r}")
