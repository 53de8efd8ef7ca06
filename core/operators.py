"""Operator accounts for the console: Argon2id hashes, sign-in, and the sign-in throttle."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import Settings
from core.crypto import Keyring
from core.db import utcnow
from core.models import Operator, OperatorRole
from core.passwords import hash_password, verify_hash, verify_nothing
from core.ratelimit import Check, Limit, RateLimiter

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_OPERATOR_PASSWORD = 10
MAX_OPERATOR_PASSWORD = 128


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


class SignInThrottle:
    """Caps console sign-in attempts per username and per client address (core/ratelimit.py).

    Keys hold keyed references, never the username or address.
    """

    def __init__(self, redis: Redis, settings: Settings, keyring: Keyring) -> None:
        self._limiter = RateLimiter(redis, settings, keyring)
        self._redis = redis

    @staticmethod
    def _user(username: str) -> Check:
        return Check(Limit.signin_user, normalise_username(username)[:64])

    async def attempt(self, username: str, address: str) -> bool:
        """Count one sign-in attempt; False when either window is full (nothing is counted)."""
        decision = await self._limiter.acquire(
            Check(Limit.signin_address, address), self._user(username)
        )
        return decision.allowed

    async def forget(self, username: str) -> None:
        """A successful sign-in clears the username's failures (not the address's)."""
        await self._redis.delete(self._limiter.key(self._user(username)))


__all__ = [
    "MIN_OPERATOR_PASSWORD",
    "OperatorError",
    "OperatorInfo",
    "OperatorRepository",
    "SignInThrottle",
    "normalise_username",
]
