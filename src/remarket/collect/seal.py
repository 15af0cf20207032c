"""The PII-sealing stage of collect, and a log wrapper that seals what else is appended.

The stage runs last before de-duplication (after validation, enrichment and the other
stages, which see events in the clear). It refuses a client's own ``sealed`` field: only
the server seals. The collector awaits :meth:`SealPII.durable` before appending, so no
event reaches the log before the key it is sealed under is committed.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Final

import msgspec

from remarket.collect.stages import InFlight, partition_of
from remarket.privacy.keyring import Keyring
from remarket.privacy.seal import Sealer
from remarket.schema.events import decode_log_message, encode_message
from remarket.storage.log import EventLog, LogEntry, LogRecord

__all__ = ["SealPII", "SealingLog"]


class _Sent(msgspec.Struct):
    sealed: msgspec.Raw = msgspec.Raw(b"")


_SENT: Final = msgspec.json.Decoder(_Sent)


class SealPII:
    """Encrypts each event's identifiers and PII fields (``sealer`` None: encryption off,
    the stage only refuses client-sent ``sealed`` fields)."""

    def __init__(self, sealer: Sealer | None, keyring: Keyring | None = None) -> None:
        self._sealer = sealer
        self._keyring = keyring

    def __call__(self, batch: InFlight) -> None:
        kept = []
        unsealed = []
        for event in batch.events:
            m = event.message
            if m.sealed is None:
                unsealed.append(m)
            # Sealed here already (a replay whose original failed comes back through the
            # stages), or sent by the client, which it may not.
            elif b'"sealed"' in event.raw and len(_SENT.decode(event.raw).sealed):
                batch.reject(
                    event.index, "invalid_event", "sealed", "sealed is set by the server only"
                )
                continue
            kept.append(event)
        if self._sealer is not None:
            self._sealer.seal_all(unsealed)
        batch.events = kept

    async def durable(self) -> None:
        """Return once the keys of every event sealed so far are committed."""
        if self._keyring is not None:
            await self._keyring.durable()


class SealingLog:
    """An :class:`EventLog` that seals unsealed events before appending them.

    For the writers that append to the log without going through collect (segment
    transitions, and later journeys and channels): wrap their log in one.
    """

    def __init__(self, log: EventLog, sealer: Sealer, keyring: Keyring, partitions: int) -> None:
        self._log = log
        self._sealer = sealer
        self._keyring = keyring
        self._partitions = partitions
        self.dedupes_itself = log.dedupes_itself

    async def append(self, entries: Sequence[LogEntry]) -> list[int]:
        messages = [decode_log_message(entry.payload) for entry in entries]
        unsealed = [i for i, message in enumerate(messages) if message.sealed is None]
        self._sealer.seal_all([messages[i] for i in unsealed])
        sealed = list(entries)
        for i in unsealed:
            message = messages[i]
            sealed[i] = LogEntry(
                encode_message(message),
                partition_of(message, self._partitions),
                entries[i].dedupe_key,
            )
        await self._keyring.durable()
        return await self._log.append(sealed)

    async def read(
        self,
        after: int,
        limit: int,
        *,
        wait: float = 0.0,
        partitions: Collection[int] | None = None,
    ) -> list[LogRecord]:
        return await self._log.read(after, limit, wait=wait, partitions=partitions)

    async def end_offset(self) -> int:
        return await self._log.end_offset()

    async def recent_dedupe_keys(self, limit: int) -> list[bytes]:
        return await self._log.recent_dedupe_keys(limit)

    async def commit(self, consumer: str, offset: int) -> None:
        await self._log.commit(consumer, offset)

    async def committed(self) -> dict[str, int]:
        return await self._log.committed()

    async def close(self) -> None:
        await self._log.close()
