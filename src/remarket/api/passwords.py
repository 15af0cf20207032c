"""Password hashing for console users: argon2id, with a dummy hash for unknown users."""

from __future__ import annotations

import secrets
import threading
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from remarket.config import Settings
from remarket.errors import InvalidInput

__all__ = ["MAX_PASSWORD", "MIN_PASSWORD", "Passwords", "check_password_rules"]

MIN_PASSWORD: Final = 12
MAX_PASSWORD: Final = 1024


def check_password_rules(password: str) -> None:
    """InvalidInput unless ``password`` is 12 to 1024 characters and not only spaces."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidInput(
            f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters, got {len(password)}",
            field="password",
        )
    if not password.strip():
        raise InvalidInput("a password cannot be only spaces", field="password")


class Passwords:
    """argon2id hashes (PHC strings that carry their own parameters and salt).

    ``verify`` with no stored hash (an unknown user) checks against a dummy hash of the
    same cost, so a wrong e-mail takes as long to refuse as a wrong password.

    >>> passwords = Passwords(time_cost=1, memory_kib=64)
    >>> stored = passwords.hash("correct horse battery")
    >>> passwords.verify(stored, "correct horse battery"), passwords.verify(stored, "wrong")
    (True, False)
    >>> passwords.verify(None, "anything")
    False
    """

    def __init__(self, *, time_cost: int = 3, memory_kib: int = 65_536, parallelism: int = 4):
        self._hasher = PasswordHasher(
            time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism
        )
        self._dummy: str | None = None
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: Settings) -> Passwords:
        """Hashing at the cost the settings ask for."""
        return cls(time_cost=settings.password_time_cost, memory_kib=settings.password_memory_kib)

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; None (no such user) is always False."""
        try:
            return self._hasher.verify(stored or self._dummy_hash(), password) and bool(stored)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(stored)

    def _dummy_hash(self) -> str:
        # Made on first need, not at start-up: a hash costs as much as a login.
        with self._lock:
            if self._dummy is None:
                self._dummy = self._hasher.hash(secrets.token_urlsafe(16))
            return self._dummy
