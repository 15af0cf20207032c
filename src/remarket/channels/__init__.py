"""Channels: the outbox, guarded idempotent delivery, providers, templates, audiences."""

from __future__ import annotations

from remarket.channels.outbox import CHANNELS, OutboxMessage, enqueue, enqueue_many

__all__ = ["CHANNELS", "OutboxMessage", "enqueue", "enqueue_many"]
