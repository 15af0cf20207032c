"""Real servers the channels talk to in tests: an SMTP server (aiosmtpd) and an HTTP
server that records every request and answers as told."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import re
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class MailSink:
    """Keeps every message the SMTP server accepted (raw), and the Message-IDs seen."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.ids: list[str] = []
        self.distinct: set[str] = set()
        self.lock = threading.Lock()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        # Only the header is read here: parsing whole messages would slow the server.
        match = _MESSAGE_ID.search(content.split(b"\r\n\r\n", 1)[0])
        message_id = match.group(1).decode() if match else ""
        with self.lock:
            self.raw.append(content)
            self.ids.append(message_id)
            self.distinct.add(message_id)
        return "250 Message accepted for delivery"

    # A method, not a property: aiosmtpd inspects the handler's members per connection.
    def messages(self) -> list[EmailMessage]:
        with self.lock:
            raw = list(self.raw)
        return [
            email.message_from_bytes(r, policy=email.policy.default)  # type: ignore[misc]
            for r in raw
        ]


_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:\s*(<[^>]*>)")


def _authenticate(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"u",
        b"p",
    )
    return AuthResult(success=ok)


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


@contextmanager
def smtp_server(
    tls: tuple[Path, Path] | None = None, *, implicit: bool = False
) -> Iterator[tuple[MailSink, int]]:
    """An aiosmtpd server on 127.0.0.1; with ``tls`` (cert, key) it requires STARTTLS,
    or with ``implicit`` speaks TLS from the first byte (port 465 style)."""
    sink = MailSink()
    port = free_port()
    options: dict[str, Any] = {}
    if tls is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls[0]), str(tls[1]))
        options = {"authenticator": _authenticate}
        if implicit:
            options |= {"ssl_context": context, "auth_require_tls": False}
        else:
            options |= {"tls_context": context, "require_starttls": True}
    controller = Controller(sink, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield sink, port
    finally:
        controller.stop()


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class HttpSink:
    """Records requests; ``respond(request)`` gives (status, JSON body)."""

    url: str
    requests: list[Request] = field(default_factory=list)
    respond: Callable[[Request], tuple[int, Any]] = lambda _r: (200, {"ok": True})


@contextmanager
def http_server() -> Iterator[HttpSink]:
    port = free_port()
    sink = HttpSink(f"http://127.0.0.1:{port}")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                self.command,
                self.path,
                {k.lower(): v for k, v in self.headers.items()},
                self.rfile.read(length),
            )
            with lock:
                sink.requests.append(request)
            status, body = sink.respond(request)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_POST = do_DELETE = do_GET = _handle

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
