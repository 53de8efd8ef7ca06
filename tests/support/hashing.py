"""A spy on the Argon2id hasher: how many hashes and verifications a piece of code costs (§6.2)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from core.accounts import passwords


@dataclass
class CountingHasher:
    """Wraps the hasher in use; counts calls (from any thread) and the most at once."""

    real: object
    # Seconds each call takes on top of the real work (to see how many run at once).
    delay: float = 0.0
    verified: int = 0
    hashed: int = 0
    running: int = 0
    most_at_once: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _enter(self) -> None:
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.delay)

    def _leave(self) -> None:
        with self._lock:
            self.running -= 1

    def verify(self, password_hash: str, password: str) -> bool:
        with self._lock:
            self.verified += 1
        self._enter()
        try:
            return bool(self.real.verify(password_hash, password))  # type: ignore[attr-defined]
        finally:
            self._leave()

    def hash(self, password: str) -> str:
        with self._lock:
            self.hashed += 1
        self._enter()
        try:
            return str(self.real.hash(password))  # type: ignore[attr-defined]
        finally:
            self._leave()

    def reset(self) -> None:
        """Start counting afresh."""
        self.verified = self.hashed = self.most_at_once = 0


@contextmanager
def counting_hashes(
    monkeypatch: pytest.MonkeyPatch, delay: float = 0.0
) -> Iterator[CountingHasher]:
    """Count every Argon2id call made while the block runs."""
    # The dummy hash for unknown names is made once, before counting starts.
    passwords.verify_nothing("warm-up")
    spy = CountingHasher(passwords._hasher_in_use, delay=delay)
    monkeypatch.setattr(passwords, "_hasher_in_use", spy)
    yield spy
