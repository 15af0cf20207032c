"""The ingest pipeline: validate, de-duplicate, enrich and append events to the log."""

from __future__ import annotations

from remarket.collect.collector import (
    Collector,
    IngestResult,
    ReplayResult,
    parse_batch,
    replay_quarantined,
)
from remarket.collect.dedupe import Deduper, dedupe_key
from remarket.collect.quarantine import Quarantined, QuarantineStore, Rejection
from remarket.collect.secret_cache import SecretCache, hash_secret
from remarket.collect.sources import Source, SourceRegistry
from remarket.collect.stages import Event, InFlight, Stage

__all__ = [
    "Collector",
    "Deduper",
    "Event",
    "InFlight",
    "IngestResult",
    "QuarantineStore",
    "Quarantined",
    "Rejection",
    "ReplayResult",
    "SecretCache",
    "Source",
    "SourceRegistry",
    "Stage",
    "dedupe_key",
    "hash_secret",
    "parse_batch",
    "replay_quarantined",
]
