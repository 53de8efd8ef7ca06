"""The reference cabinet's settings, checked once when the app is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cabinet_reference.passwords import PasswordPolicy
from cabinet_reference.signing import MAX_CLOCK_SKEW_SECONDS, check_secret

Clock = Callable[[], datetime]

DEFAULT_PREFIX = "/recovery/v1"
# §11: keys are kept at least 24 h.
MIN_KEY_RETENTION = timedelta(hours=24)


def system_clock() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def normalise_prefix(prefix: str) -> str:
    """`/recovery/v1` form: a leading slash, no trailing one; `` or `/` mean the root."""
    stripped = prefix.strip().strip("/")
    return f"/{stripped}" if stripped else ""


@dataclass(frozen=True, slots=True)
class CabinetConfig:
    """Everything the app needs besides its store."""

    secret: str = field(repr=False)
    prefix: str = DEFAULT_PREFIX
    policy: PasswordPolicy = field(default_factory=PasswordPolicy)
    max_clock_skew_seconds: int = MAX_CLOCK_SKEW_SECONDS
    key_retention: timedelta = timedelta(hours=48)
    # A claim this old never completed (its commit would have completed it): a retry may take it.
    stale_claim_after: timedelta = timedelta(seconds=60)
    session_lifetime: timedelta = timedelta(hours=8)
    change_password_lifetime: timedelta = timedelta(minutes=15)
    secure_cookies: bool = False
    max_body_bytes: int = 16 * 1024
    clock: Clock = system_clock

    def __post_init__(self) -> None:
        check_secret(self.secret)
        object.__setattr__(self, "prefix", normalise_prefix(self.prefix))
        if self.key_retention < MIN_KEY_RETENTION:
            raise ValueError("idempotency keys must be kept at least 24 hours (§11)")
        if self.policy.min_length < 1:
            raise ValueError("the password policy needs a minimum length of at least 1")
