"""Temporary passwords from a CSPRNG, and Argon2id hashing for every stored password."""

from __future__ import annotations

import secrets

from argon2 import Parameters, PasswordHasher, Type, profiles
from argon2.exceptions import InvalidHashError, VerificationError

from core.config import Settings

# RFC 9106's second recommended profile (t=3, m=64 MiB, p=4): strong and still quick enough
# for a hotline, where a caller waits on every verification.
STANDARD_PARAMETERS = profiles.RFC_9106_LOW_MEMORY
FAST_PARAMETERS = profiles.CHEAPEST


def _hasher(parameters: Parameters) -> PasswordHasher:
    if parameters.type is not Type.ID:
        raise ValueError("only Argon2id is allowed")
    return PasswordHasher.from_parameters(parameters)


_hasher_in_use = _hasher(STANDARD_PARAMETERS)
# Hash of a random password, verified against when there is no real hash, so that an unknown
# account costs the same time as a known one (§6.2). Rebuilt whenever the hasher changes.
_dummy_hash: str | None = None


def use_fast_hashing_for_tests() -> None:
    """Switch to the cheapest Argon2id parameters; for test suites only."""
    global _hasher_in_use, _dummy_hash
    _hasher_in_use = _hasher(FAST_PARAMETERS)
    _dummy_hash = None


def use_standard_hashing() -> None:
    """Switch back to the production Argon2id parameters."""
    global _hasher_in_use, _dummy_hash
    _hasher_in_use = _hasher(STANDARD_PARAMETERS)
    _dummy_hash = None


def hash_password(password: str) -> str:
    """Hash a password with Argon2id and a fresh random salt."""
    return _hasher_in_use.hash(password)


def verify_hash(password_hash: str, password: str) -> bool:
    """Whether `password` matches `password_hash`; False for a mismatch or an unusable hash."""
    try:
        return _hasher_in_use.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def verify_nothing(password: str) -> bool:
    """Spend the time of one verification where there is no hash to check; always False."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(secrets.token_urlsafe(16))
    verify_hash(_dummy_hash, password)
    return False


def generate_temporary_password(settings: Settings) -> str:
    """A random password of the configured length and alphabet, with a letter and a digit."""
    alphabet = "".join(dict.fromkeys(settings.temp_password_alphabet))
    length = settings.temp_password_length
    needs_letter = any(ch.isalpha() for ch in alphabet)
    needs_digit = any(ch.isdecimal() for ch in alphabet)
    # Rejection sampling keeps every acceptable password equally likely, unlike planting a
    # digit at a random position.
    while True:
        password = "".join(secrets.choice(alphabet) for _ in range(length))
        if needs_letter and not any(ch.isalpha() for ch in password):
            continue
        if needs_digit and not any(ch.isdecimal() for ch in password):
            continue
        return password
