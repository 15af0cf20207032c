"""The channels key: encrypts provider credentials at rest and signs unsubscribe tokens."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from remarket.config import Settings
from remarket.errors import InvalidInput

__all__ = ["KEY_FILE", "SecretBox", "load_key"]

KEY_FILE: Final = "channels.key"
_NONCE: Final = 12
_VERSION: Final = b"\x01"


def _decode(text: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(text.strip().encode())
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the channels key must be urlsafe base64") from exc
    if len(key) != 32:
        raise ValueError(f"the channels key must be 32 bytes, got {len(key)}")
    return key


def load_key(settings: Settings) -> bytes:
    """``settings.channels_key``, or the key in ``data_dir/channels.key`` (made on first
    use, readable by its owner only), so the embedded default needs no setup."""
    if settings.channels_key is not None:
        return _decode(settings.channels_key.get_secret_value())
    path = Path(settings.data_dir) / KEY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
        try:
            # O_EXCL: two processes starting at once agree on the first one's key.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(text + "\n")
    return _decode(path.read_text())


class SecretBox:
    """AES-256-GCM for credentials, HMAC-SHA256 for tokens; each under its own key
    derived from the channels key.

    >>> box = SecretBox(bytes(32))
    >>> box.decrypt(box.encrypt({"password": "s3cret"}))
    {'password': 's3cret'}
    >>> box.verify(box.sign({"p": "p_1"}))
    {'p': 'p_1'}
    """

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(hmac.digest(key, b"remarket/channels/credentials", hashlib.sha256))
        self._mac_key = hmac.digest(key, b"remarket/channels/tokens", hashlib.sha256)

    def encrypt(self, credentials: dict[str, Any]) -> bytes:
        nonce = secrets.token_bytes(_NONCE)
        plain = json.dumps(credentials, sort_keys=True).encode()
        return _VERSION + nonce + self._aead.encrypt(nonce, plain, _VERSION)

    def decrypt(self, blob: bytes) -> dict[str, Any]:
        if blob[:1] != _VERSION:
            raise ValueError("unknown credentials format")
        try:
            plain = self._aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], _VERSION)
        except InvalidTag as exc:
            raise ValueError("credentials do not decrypt under this channels key") from exc
        value: dict[str, Any] = json.loads(plain)
        return value

    def sign(self, claims: dict[str, str]) -> str:
        body = base64.urlsafe_b64encode(
            json.dumps(claims, sort_keys=True, separators=(",", ":")).encode()
        ).rstrip(b"=")
        mac = base64.urlsafe_b64encode(hmac.digest(self._mac_key, body, hashlib.sha256)[:18])
        return f"{body.decode()}.{mac.decode()}"

    def verify(self, token: str) -> dict[str, str]:
        """The claims of a token this key signed; InvalidInput for any other."""
        body, _, mac = token.partition(".")
        expected = base64.urlsafe_b64encode(
            hmac.digest(self._mac_key, body.encode(), hashlib.sha256)[:18]
        ).decode()
        # Compared as bytes: a str with non-ASCII characters cannot be compared in constant
        # time (TypeError), and a token with them is not one of ours anyway.
        if not mac or not hmac.compare_digest(mac.encode(), expected.encode()):
            raise InvalidInput("the token is not valid", field="token")
        claims: dict[str, str] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return claims
