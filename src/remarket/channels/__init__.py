"""Channels: the outbox, guarded idempotent delivery, providers, templates, audiences.

Delivery guarantee: every outbox row is sent at most once per attempt and its outcome
is recorded right after the provider answers. A crash between the provider's answer
and that record (at most one message per concurrent sender of a deliverer, 8 by
default) sends those messages again after restart, with the same idempotency key:
the same ``Message-ID`` for e-mail, the same ``Idempotency-Key`` header for webhooks,
the same upload session for Meta. So a provider may see a message twice, never two
different messages: effectively once for any receiver that de-duplicates by that id
(SMS through Twilio has no such id: a crash may repeat an SMS). Each send is marked
``in_doubt`` before the provider is reached, and the mark is cleared with the outcome, so
the store knows which messages are in doubt after a crash: they stay so through any
pause, deferral or retry (recorded with its reason as for any message), are sent again
and recorded as ``resent`` (counted in the journey funnel), and every message a crash
repeats is among them (a retry after a timeout, the provider's answer lost, may repeat a
message too).
"""

from __future__ import annotations

from remarket.channels.counts import NodeCounts, delivery_counts
from remarket.channels.delivery import Delivery
from remarket.channels.outbox import CHANNELS, OutboxMessage, enqueue, enqueue_many

__all__ = [
    "CHANNELS",
    "Delivery",
    "NodeCounts",
    "OutboxMessage",
    "delivery_counts",
    "enqueue",
    "enqueue_many",
]
