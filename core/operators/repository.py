"""Operator accounts: Argon2id hashes, console sign-in and its throttle, the desk phone's PIN."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from enum import StrEnum

import structlog
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.accounts.passwords import hash_in_pool, verify_in_pool, verify_nothing_in_pool
from core.audit.log import AuditLog
from core.kit.phones import mask_phone
from core.models import Operator, OperatorRole
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.limits import Check, Limit, RateLimiter

log = structlog.get_logger(__name__)

USERNAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
MIN_OPERATOR_PASSWORD = 10
MAX_OPERATOR_PASSWORD = 128
MIN_DESK_PIN = 6
MAX_DESK_PIN = 12
# Desk numbers are the operators' ids: a few digits, keyed before the PIN.
MAX_DESK_NUMBER_DIGITS = 6


class OperatorError(ValueError):
    """An operator account could not be created or changed; the message says why."""


@dataclass(frozen=True, slots=True)
class OperatorInfo:
    """What the console knows about a signed-in operator."""

    username: str
    display_name: str
    role: OperatorRole
    active: bool
    # The number the operator keys at the desk phone before the PIN (their id).
    desk_number: int = 0
    has_desk_pin: bool = False

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
    return OperatorInfo(
        row.username,
        row.display_name,
        OperatorRole(row.role),
        row.active,
        desk_number=row.id,
        has_desk_pin=row.desk_pin_hash is not None,
    )


def check_desk_pin(pin: str) -> None:
    """Refuse a PIN that is not 6-12 digits or is trivially guessed (raises OperatorError)."""
    if not re.fullmatch(r"\d+", pin):
        raise OperatorError("the PIN must be digits only (it is keyed on a phone)")
    if not MIN_DESK_PIN <= len(pin) <= MAX_DESK_PIN:
        raise OperatorError(f"the PIN must have {MIN_DESK_PIN} to {MAX_DESK_PIN} digits")
    steps = {(int(b) - int(a)) % 10 for a, b in itertools.pairwise(pin)}
    if len(set(pin)) == 1 or steps in ({1}, {9}):
        raise OperatorError("the PIN must not be one digit repeated or a run of consecutive digits")


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
            password_hash=await hash_in_pool(password),
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

    async def set_desk_pin(self, username: str, pin: str) -> OperatorInfo | None:
        """Set (or replace) the operator's desk PIN; None for an unknown name."""
        check_desk_pin(pin)
        row = await self._get(normalise_username(username))
        if row is None:
            return None
        row.desk_pin_hash = await hash_in_pool(pin)
        await self._session.flush()
        return _info(row)

    async def authenticate(self, username: str, password: str) -> OperatorInfo | None:
        """The operator if the password is right and the account active, else None.

        An unknown name costs one Argon2 verification too, so timing does not reveal names.
        """
        row = await self._get(normalise_username(username)[:64])
        if row is None:
            await verify_nothing_in_pool(password)
            return None
        if not await verify_in_pool(row.password_hash, password):
            return None
        if not row.active:
            return None
        row.last_login_at = utcnow()
        await self._session.flush()
        return _info(row)

    async def authenticate_desk(self, desk_number: str, pin: str) -> OperatorInfo | None:
        """The active operator with this desk number and PIN, else None.

        An unknown number, or an operator without a PIN, costs one Argon2 verification too.
        """
        row = None
        if desk_number.isdigit() and len(desk_number) <= MAX_DESK_NUMBER_DIGITS:
            row = await self._session.get(Operator, int(desk_number))
        pin = pin[: MAX_DESK_PIN + 1]
        if row is None or row.desk_pin_hash is None:
            await verify_nothing_in_pool(pin)
            return None
        if not await verify_in_pool(row.desk_pin_hash, pin) or not row.active:
            return None
        return _info(row)

    async def _get(self, username: str) -> Operator | None:
        stmt = select(Operator).where(Operator.username == username)
        return (await self._session.scalars(stmt)).one_or_none()


class SignInThrottle:
    """Caps console sign-in attempts per username and per client address (core/recovery/limits.py).

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


class DeskVerdict(StrEnum):
    """What the desk phone's sign-in came to."""

    accepted = "accepted"
    refused = "refused"
    limited = "limited"


# Twilio's stand-ins for a withheld caller ID: never a recognised desk phone.
_WITHHELD = frozenset({"", "anonymous", "restricted", "unavailable", "unknown", "+266696687"})
# A desk call stays signed in for a shift; desk phones are remembered for a quarter.
DESK_SESSION_SECONDS = 12 * 3600
KNOWN_DESK_PHONE_SECONDS = 90 * 24 * 3600
DESK_TRY_SECONDS = 3600


class DeskSignIn:
    """Signs a call in at the operators' desk phone with a desk number and a PIN (§6.11).

    One PIN check per call (a wrong one ends it). Failed checks are limited per calling number
    and, for numbers no operator has signed in from yet, in all: strangers guessing from many
    numbers are held to a trickle, and an operator on a recognised desk phone is never held
    back by them. A successful check spends no limit. Caller ID only chooses the bucket: it is
    never enough to get in (§6.3). Keys hold keyed references, never the number or the PIN.
    """

    def __init__(
        self,
        *,
        session: AsyncSession,
        redis: Redis,
        settings: Settings,
        keyring: Keyring,
        audit: AuditLog,
    ) -> None:
        self._operators = OperatorRepository(session)
        self._redis = redis
        self._settings = settings
        self._keyring = keyring
        self._audit = audit
        self._limiter = RateLimiter(redis, settings, keyring)

    def _key(self, kind: str, subject: str) -> str:
        return f"desk:{kind}:{self._keyring.reference(subject)}"

    async def signed_in(self, call_sid: str) -> str | None:
        """The operator this desk call signed in as, if it did."""
        value = await self._redis.get(self._key("auth", call_sid))
        return str(value) if value else None

    async def trust_sip(self, call_sid: str, caller: str) -> bool:
        """Sign in a call from a PBX-authenticated SIP desk, when the settings allow it."""
        if not (self._settings.operator_desk_trust_sip and caller.startswith("sip:")):
            return False
        await self._redis.set(self._key("auth", call_sid), "sip", ex=DESK_SESSION_SECONDS)
        await self._audit.record(
            "operator.desk_signed_in", channel="voice", session_ref=call_sid, method="sip"
        )
        return True

    async def may_try(self, caller: str) -> bool:
        """Whether this number may try a PIN now (counts nothing)."""
        return (await self._limiter.peek(*await self._checks(caller))).allowed

    async def check(self, call_sid: str, caller: str, desk_number: str, pin: str) -> DeskVerdict:
        """Check a desk number and PIN, once per call; audited without the PIN."""
        claimed = await self._redis.set(self._key("try", call_sid), 1, nx=True, ex=DESK_TRY_SECONDS)
        if not claimed:
            # A second PIN in the same call (or a replayed webhook): never a second guess.
            await self._refused(call_sid, caller, "second_try")
            return DeskVerdict.refused
        permit = await self._limiter.acquire(*await self._checks(caller))
        if not permit.allowed:
            await self._refused(call_sid, caller, "limited")
            return DeskVerdict.limited
        operator = await self._operators.authenticate_desk(desk_number, pin)
        if operator is None:
            await self._refused(call_sid, caller, "wrong")
            return DeskVerdict.refused
        await self._limiter.release(permit)
        await self._redis.set(
            self._key("auth", call_sid), operator.username, ex=DESK_SESSION_SECONDS
        )
        if _recognisable(caller):
            await self._redis.set(self._key("known", caller), 1, ex=KNOWN_DESK_PHONE_SECONDS)
        await self._audit.record(
            "operator.desk_signed_in",
            channel="voice",
            session_ref=call_sid,
            operator=operator.username,
            method="pin",
            caller=mask_phone(caller),
        )
        log.info("desk.signed_in", call=call_sid, operator=operator.username)
        return DeskVerdict.accepted

    async def _checks(self, caller: str) -> list[Check]:
        checks = [Check(Limit.desk_signin_caller, caller.lower())]
        known = _recognisable(caller) and await self._redis.exists(self._key("known", caller))
        if not known:
            checks.append(Check(Limit.desk_signin_unrecognised))
        return checks

    async def _refused(self, call_sid: str, caller: str, reason: str) -> None:
        await self._audit.record(
            "operator.desk_signin_refused",
            channel="voice",
            session_ref=call_sid,
            reason=reason,
            caller=mask_phone(caller),
        )
        log.warning("desk.signin_refused", call=call_sid, reason=reason)


def _recognisable(caller: str) -> bool:
    return caller.lower() not in _WITHHELD and bool(
        re.fullmatch(r"\+[1-9]\d{6,14}", caller) or caller.startswith("sip:")
    )


__all__ = [
    "MAX_DESK_PIN",
    "MIN_DESK_PIN",
    "MIN_OPERATOR_PASSWORD",
    "DeskSignIn",
    "DeskVerdict",
    "OperatorError",
    "OperatorInfo",
    "OperatorRepository",
    "SignInThrottle",
    "check_desk_pin",
    "normalise_username",
]
