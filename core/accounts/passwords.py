"""Temporary passwords from a CSPRNG, and Argon2id hashing for every stored password.

Argon2id runs with §5's parameters (OWASP's minimum by default, configurable upwards) in a small
bounded thread pool: each hash holds its memory cost for its whole run, so a burst of sign-ins
or recoveries queues for the pool instead of stalling the event loop or exhausting memory.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from argon2 import DEFAULT_RANDOM_SALT_LENGTH, Parameters, PasswordHasher, Type, profiles
from argon2.exceptions import InvalidHashError, VerificationError

from core.platform.settings import Settings

T = TypeVar("T")

# OWASP's minimum for Argon2id (m = 19 MiB, t = 2, p = 1); the settings may only raise it.
STANDARD_PARAMETERS = Parameters(
    type=Type.ID,
    version=19,
    salt_len=DEFAULT_RANDOM_SALT_LENGTH,
    hash_len=32,
    time_cost=2,
    memory_cost=19 * 1024,
    parallelism=1,
)
FAST_PARAMETERS = profiles.CHEAPEST
DEFAULT_POOL_SIZE = 2


def _hasher(parameters: Parameters) -> PasswordHasher:
    if parameters.type is not Type.ID:
        raise ValueError("only Argon2id is allowed")
    return PasswordHasher.from_parameters(parameters)


def parameters_from(settings: Settings) -> Parameters:
    """The Argon2id parameters the settings ask for."""
    return Parameters(
        type=Type.ID,
        version=19,
        salt_len=DEFAULT_RANDOM_SALT_LENGTH,
        hash_len=32,
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
    )


_configured = STANDARD_PARAMETERS
_fast_for_tests = False
_hasher_in_use = _hasher(STANDARD_PARAMETERS)
# Hash of a random password, verified against when there is no real hash, so that an unknown
# account costs the same time as a known one (§6.2). Rebuilt whenever the hasher changes.
_dummy_hash: str | None = None
_pool_size = DEFAULT_POOL_SIZE
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _switch(parameters: Parameters) -> None:
    global _hasher_in_use, _dummy_hash
    _hasher_in_use = _hasher(parameters)
    _dummy_hash = None


def configure_hashing(settings: Settings) -> None:
    """Take the Argon2id parameters and the pool's size from the settings (at start-up)."""
    global _configured, _pool_size, _pool
    _configured = parameters_from(settings)
    if not _fast_for_tests:
        _switch(_configured)
    with _pool_lock:
        if settings.argon2_pool_size != _pool_size:
            old, _pool = _pool, None
            _pool_size = settings.argon2_pool_size
            if old is not None:
                old.shutdown(wait=False)


def use_fast_hashing_for_tests() -> None:
    """Switch to the cheapest Argon2id parameters; for test suites only."""
    global _fast_for_tests
    _fast_for_tests = True
    _switch(FAST_PARAMETERS)


def use_standard_hashing() -> None:
    """Switch back to the configured (production) Argon2id parameters."""
    global _fast_for_tests
    _fast_for_tests = False
    _switch(_configured)


def hash_password(password: str) -> str:
    """Hash a password with Argon2id and a fresh random salt (blocking: see `hash_in_pool`)."""
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


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="argon2")
        return _pool


async def _in_pool(function: Callable[..., T], *args: str) -> T:
    # One pool for the process, whatever the event loop: at most `argon2_pool_size` hashes
    # (each holding its memory cost) run at once; the rest wait their turn, off the loop.
    return await asyncio.get_running_loop().run_in_executor(_executor(), function, *args)


async def hash_in_pool(password: str) -> str:
    """`hash_password` in the bounded pool, off the event loop."""
    return await _in_pool(hash_password, password)


async def verify_in_pool(password_hash: str, password: str) -> bool:
    """`verify_hash` in the bounded pool, off the event loop."""
    return await _in_pool(verify_hash, password_hash, password)


async def verify_nothing_in_pool(password: str) -> bool:
    """`verify_nothing` in the bounded pool: the same work as a real check; always False."""
    return await _in_pool(verify_nothing, password)


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
