"""E-mail over SMTP (aiosmtplib): HTML and text, RFC 8058 one-click unsubscribe headers."""

from __future__ import annotations

import hashlib
import ssl
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate
from typing import Any, Literal

import aiosmtplib

from remarket.channels.providers import Envelope, SendFailed

__all__ = ["SmtpProvider", "build_email", "message_id_for"]


def message_id_for(key: str, domain: str) -> str:
    """The Message-ID of the send with idempotency key ``key``: the same on every retry,
    so a copy sent again after a crash is recognisably the same message.

    >>> message_id_for("k1", "shop.example")
    '<6ab9f1eb8f7d3388f4f9d586f66e99fd54080df2@shop.example>'
    """
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:40]}@{domain}>"


def build_email(envelope: Envelope, *, sender: str, sender_name: str | None) -> Message:
    """The MIME message: text, with an HTML alternative when the template has one.

    Built with the compat32 classes: the modern policy folds headers several times
    slower, and these headers need no folding beyond what compat32 does.
    """
    if envelope.content is None:
        raise ValueError("an e-mail envelope needs rendered content")
    domain = sender.rpartition("@")[2] or "localhost"
    text = MIMEText(envelope.content.text, "plain", "utf-8")
    message: Message
    if envelope.content.html:
        message = MIMEMultipart("alternative")
        message.attach(text)
        message.attach(MIMEText(envelope.content.html, "html", "utf-8"))
    else:
        message = text
    message["From"] = formataddr((sender_name, sender)) if sender_name else sender
    message["To"] = envelope.to
    subject = envelope.content.subject or ""
    message["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = message_id_for(envelope.key, domain)
    if envelope.unsubscribe_url:
        # RFC 2369 link plus RFC 8058: a mail client may POST to it without a page view.
        message["List-Unsubscribe"] = f"<{envelope.unsubscribe_url}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return message


class SmtpProvider:
    """Sends through one SMTP server, keeping the connection open between messages.

    ``security``: ``"starttls"`` (upgrade on port 587), ``"tls"`` (implicit, port 465)
    or ``"none"`` (a local relay). ``ca_file`` trusts a private CA.
    """

    channel = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        sender: str,
        sender_name: str | None = None,
        security: Literal["starttls", "tls", "none"] = "starttls",
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ValueError("security must be starttls, tls or none")
        self._sender = sender
        self._sender_name = sender_name
        self._username = username
        self._password = password
        context = ssl.create_default_context(cafile=ca_file) if security != "none" else None
        options: dict[str, Any] = {"hostname": host, "port": port, "timeout": timeout}
        if security == "tls":
            options |= {"use_tls": True, "tls_context": context}
        elif security == "starttls":
            options |= {"start_tls": True, "tls_context": context}
        else:
            options |= {"start_tls": False}
        self._options = options
        # Idle connections; a send takes one (or opens one), so sends run side by side.
        self._idle: list[aiosmtplib.SMTP] = []

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(**self._options)
        await client.connect()
        try:
            if self._username:
                await client.login(self._username, self._password or "")
        except BaseException:
            client.close()
            raise
        return client

    async def send(self, envelope: Envelope) -> None:
        message = build_email(envelope, sender=self._sender, sender_name=self._sender_name)
        client: aiosmtplib.SMTP | None = None
        while self._idle and client is None:
            candidate = self._idle.pop()
            client = candidate if candidate.is_connected else None
        try:
            if client is None:
                client = await self._connect()
            await client.send_message(message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if client is not None:  # it answered, so it is still usable
                self._idle.append(client)
            permanent = all(500 <= e.code < 600 for e in exc.recipients)
            raise SendFailed(f"recipient refused: {exc}", permanent=permanent) from exc
        except aiosmtplib.SMTPResponseException as exc:
            _drop(client)
            raise SendFailed(f"SMTP {exc.code}: {exc.message}", permanent=exc.code >= 500) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:
            _drop(client)
            raise SendFailed(f"SMTP: {exc}") from exc
        except BaseException:
            _drop(client)
            raise
        self._idle.append(client)

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            if client.is_connected:
                try:
                    await client.quit()
                except (aiosmtplib.SMTPException, OSError):
                    client.close()


def _drop(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        client.close()
