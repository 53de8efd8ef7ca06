"""Operator accounts for the console: Argon2id hashes, sign-in, and the sign-in throttle."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings
from core.crypto import Keyring
from core.db import utcnow
from core.models import Operator, OperatorRole
from core.passwords import hash_password, verify_hash, verify_nothing

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_OPERATOR_PASSWORD = 10
MAX_OPERATOR_PASSWORD = 128
SIGNIN_WINDOW_SECONDS = 15 * 60


class OperatorError(ValueError):
    """An operator account could not be created or changed; the message says why."""


@dataclass(frozen=True, slots=True)
class OperatorInfo:
    """What the console knows about a signed-in operator."""

    username: str
    display_name: str
    role: OperatorRole
    active: bool

    @property
    def is_supervisor(self) -> bool:
        """Whether the operator may see the supervisor view."""
        return self.role is OperatorRole.supervisor

    @property
    def label(self) -> str:
        """The name to show: the full name, else the username."""
        return self.display_name or self.username


def normalise_username(username: str) -> str:
    """Usernames are case-insensitive: stored and compared lower-case."""
    return username.strip().lower()


def _info(row: Operator) -> OperatorInfo:
    return OperatorInfo(row.username, row.display_name, OperatorRole(row.role), row.active)


class OperatorRepository:
    """Operator accounts in the caller's transaction."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(
        self,
        username: str,
        password: str,
        *,
        display_name: str = "",
        role: OperatorRole = OperatorRole.operator,
    ) -> OperatorInfo:
        """Create an operator; raises OperatorError for a taken name or a weak password."""
        name = normalise_username(username)
        if not USERNAME_PATTERN.fullmatch(name):
            raise OperatorError(
                "the username must be 2-64 characters: latin letters, digits, '.', '_' or '-'"
            )
        if len(password) < MIN_OPERATOR_PASSWORD:
            raise OperatorError(f"the password needs at least {MIN_OPERATOR_PASSWORD} characters")
        if len(password) > MAX_OPERATOR_PASSWORD:
            raise OperatorError(f"the password may have at most {MAX_OPERATOR_PASSWORD} characters")
        if await self._get(name) is not None:
            raise OperatorError(f"an operator named {name!r} already exists")
        row = Operator(
            username=name,
            display_name=display_name.strip()[:128],
            password_hash=await asyncio.to_thread(hash_password, password),
            role=role,
            active=True,
        )
        self._session.add(row)
        await self._session.flush()
        return _info(row)

    async def list(self) -> list[OperatorInfo]:
        """Every operator, by username."""
        rows = await self._session.scalars(select(Operator).order_by(Operator.username))
        return [_info(row) for row in rows]

    async def get(self, username: str) -> OperatorInfo | None:
        """The operator with this username, active or not."""
        row = await self._get(normalise_username(username))
        return _info(row) if row else None

    async def disable(self, username: str) -> bool:
        """Stop an operator from signing in (their sessions end at the next request)."""
        row = await self._get(normalise_username(username))
        if row is None:
            return False
        row.active = False
        await self._session.flush()
        return True

    async def authenticate(self, username: str, password: str) -> OperatorInfo | None:
        """The operator if the password is right and the account active, else None.

        An unknown name costs one Argon2 verification too, so timing does not reveal names.
        """
        row = await self._get(normalise_username(username)[:64])
        if row is None:
            await asyncio.to_thread(verify_nothing, password)
            return None
        if not await asyncio.to_thread(verify_hash, row.password_hash, password):
            return None
        if not row.active:
            return None
        row.last_login_at = utcnow()
        await self._session.flush()
        return _info(row)

    async def _get(self, username: str) -> Operator | None:
        stmt = select(Operator).where(Operator.username == username)
        return (await self._session.scalars(stmt)).one_or_none()


class SignInSubject(StrEnum):
    username = "user"
    address = "ip"


# The sliding log of core/ratelimit.py, for any number of keys at once: drop events older than
# the window, refuse when any key is full (recording nothing), else record the event in every
# key. KEYS: the windows; ARGV: now ms, member, window ms, then one limit per key. 1 = allowed.
_SLIDING_WINDOWS = """
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[3])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= tonumber(ARGV[3 + i]) then
    return 0
  end
end
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now, ARGV[2])
  redis.call('PEXPIRE', key, window)
end
return 1
"""


class SignInThrottle:
    """Caps console sign-in attempts per username and per client address.

    core/ratelimit.py's limits are the §6.4 recovery limits with their own metric vocabulary;
    sign-in is a different subject, so it gets its own keys, but the same sliding log in one
    Lua script. Keys hold keyed references, never the username or address.
    """

    def __init__(self, redis: Redis, settings: Settings, keyring: Keyring) -> None:
        self._redis = redis
        self._keyring = keyring
        self._limits = {
            SignInSubject.username: settings.console_signin_per_user,
            SignInSubject.address: settings.console_signin_per_ip,
        }
        self._script = redis.register_script(_SLIDING_WINDOWS)

    def _key(self, subject: SignInSubject, value: str) -> str:
        # One hash tag, so the two-key script also runs on Redis Cluster.
        return f"console:{{signin}}:{subject}:{self._keyring.reference(value)}"

    async def attempt(self, username: str, address: str) -> bool:
        """Count one sign-in attempt; False when either window is full (nothing is counted)."""
        now_ms = int(time.time() * 1000)
        subjects = (
            (SignInSubject.address, address),
            (SignInSubject.username, normalise_username(username)[:64]),
        )
        allowed = await self._script(
            keys=[self._key(subject, value) for subject, value in subjects],
            args=[
                now_ms,
                f"{now_ms}-{secrets.token_hex(8)}",
                SIGNIN_WINDOW_SECONDS * 1000,
                *(self._limits[subject] for subject, _ in subjects),
            ],
        )
        return bool(int(allowed))

    async def forget(self, username: str) -> None:
        """A successful sign-in clears the username's failures (not the address's)."""
        await self._redis.delete(
            self._key(SignInSubject.username, normalise_username(username)[:64])
        )


__all__ = [
    "MIN_OPERATOR_PASSWORD",
    "OperatorError",
    "OperatorInfo",
    "OperatorRepository",
    "SignInThrottle",
    "normalise_username",
]
