"""The one clock: every "now" in the gateway comes from here (tests inject their own `Clock`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The current time, timezone-aware."""
    return datetime.now(UTC)
