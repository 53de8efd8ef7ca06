"""Password hashing (argon2id) and the cabinet's password policy."""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

_GENERATED_ALPHABET = string.ascii_lowercase + string.digits


@dataclass(frozen=True, slots=True)
class PasswordPolicy:
    """What the cabinet accepts as a password, from the gateway or from the resident."""

    min_length: int = 8
    max_length: int = 128

    def allows(self, password: str) -> bool:
        """Whether the password passes the policy."""
        return (
            self.min_length <= len(password) <= self.max_length
            and password.isprintable()
            and password == password.strip()
        )


class Passwords:
    """Hashes and checks passwords; a check of an unknown account costs as much as a real one."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def hash(self, password: str) -> str:
        """An argon2id hash of the password."""
        return self._hasher.hash(password)

    def matches(self, password_hash: str | None, password: str) -> bool:
        """Whether the password matches the hash; with no hash, a decoy check and False."""
        try:
            if password_hash is None:
                self._hasher.verify(self._dummy_hash, password)
                return False
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


def generate_password(length: int = 16) -> str:
    """A random password (for accounts imported without one)."""
    return "".join(secrets.choice(_GENERATED_ALPHABET) for _ in range(length))
