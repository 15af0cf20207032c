"""A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps the recipients of what it got."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


class Inbox:
    """Every accepted message as (recipients, raw bytes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._got: list[tuple[list[str], bytes]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            self._got.append((list(envelope.rcpt_tos), envelope.original_content or b""))
        return "250 OK"

    def recipients(self) -> list[str]:
        """Who got mail, one entry per message, sorted."""
        with self._lock:
            return sorted(to for tos, _ in self._got for to in tos)

    def raw(self) -> list[bytes]:
        with self._lock:
            return [content for _, content in self._got]


@contextmanager
def smtp_server() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()
