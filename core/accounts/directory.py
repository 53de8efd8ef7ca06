"""The accounts directory port (§5) and its implementation over the gateway's own tables."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Protocol

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import lazyload

from core.accounts.passwords import (
    generate_temporary_password,
    hash_in_pool,
    verify_in_pool,
    verify_nothing_in_pool,
)
from core.kit.phones import Phone, mask_account
from core.models import Account, AccountPhone, Credential, LineType
from core.platform.clock import utcnow
from core.platform.settings import Settings

MIN_PASSWORD_LENGTH = 8
# Argon2 takes any length; the cap only keeps a hostile caller from making us hash megabytes.
MAX_PASSWORD_LENGTH = 128


@dataclass(frozen=True, slots=True)
class AccountRecord:
    """What the recovery flow may know about an account."""

    account_number: str
    login: str
    full_name: str
    email: str | None
    phones: tuple[Phone, ...]

    @property
    def mobiles(self) -> tuple[Phone, ...]:
        """The mobile phones on file, in file order."""
        return tuple(phone for phone in self.phones if phone.line_type is LineType.mobile)

    @property
    def first_mobile(self) -> Phone | None:
        """The first mobile phone on file, if any."""
        mobiles = self.mobiles
        return mobiles[0] if mobiles else None

    def __repr__(self) -> str:
        # Personal data stay out of logs: masked number, masked phones, nothing else.
        return f"AccountRecord({mask_account(self.account_number)}, phones={self.phones!r})"


@dataclass(frozen=True, slots=True)
class PasswordCheck:
    """The directory's answer to a password."""

    accepted: bool
    change_required: bool


REFUSED = PasswordCheck(accepted=False, change_required=False)


class ChangeRefusal(StrEnum):
    current_not_accepted = "current_not_accepted"
    same_as_current = "same_as_current"
    too_short = "too_short"
    too_long = "too_long"


_REFUSAL_TEXT = {
    ChangeRefusal.current_not_accepted: "the current password was not accepted",
    ChangeRefusal.same_as_current: "the new password must differ from the current one",
    ChangeRefusal.too_short: f"the new password needs at least {MIN_PASSWORD_LENGTH} characters",
    ChangeRefusal.too_long: f"the new password may have at most {MAX_PASSWORD_LENGTH} characters",
}


class PasswordChangeRefused(ValueError):
    """The password change was refused; `reason` says why."""

    def __init__(self, reason: ChangeRefusal) -> None:
        super().__init__(_REFUSAL_TEXT[reason])
        self.reason = reason


class DirectoryUnavailable(RuntimeError):
    """The directory did not answer usably (the cabinet down, 5xx after retries, 401, garbage).

    The caller hears the apology and is offered the operator; never "unknown account".
    """


class PasswordNotSet(RuntimeError):
    """The directory definitely did not set the temporary password; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the cabinet did not set the temporary password: {reason}")
        self.reason = reason


class Applied(StrEnum):
    """A temporary password the directory stored, or one it may have (a cabinet's time-out)."""

    applied = "applied"
    # The outcome is unknown after the retries: the password is delivered anyway (§6.13
    # forbids leaving the resident with neither) and the same PUT is retried until settled.
    ambiguous = "ambiguous"


@dataclass(frozen=True, slots=True)
class TemporaryPassword:
    """What the gateway hands the directory (§5, §11): the password is the gateway's own."""

    password: str
    expires_at: datetime
    channel: str
    reference: str

    def __repr__(self) -> str:
        return f"TemporaryPassword({self.channel}, {self.reference})"

    def body(self) -> bytes:
        """The PUT body: compact JSON, non-ASCII escaped, so the signed bytes survive (§11)."""
        return json.dumps(
            {
                "password": self.password,
                "expires_at": self.expires_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "must_change": True,
                "channel": self.channel,
                "reference": self.reference,
            },
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode("ascii")


def new_temporary_password(
    settings: Settings, *, channel: str, reference: str, now: datetime | None = None
) -> TemporaryPassword:
    """A fresh temporary password (§5) for the directory to store, valid for the set hours."""
    return TemporaryPassword(
        password=generate_temporary_password(settings),
        expires_at=(now or utcnow()) + timedelta(hours=settings.temp_password_ttl_hours),
        channel=channel,
        reference=reference,
    )


class AccountDirectory(Protocol):
    """Where accounts and their cabinet passwords live (§5)."""

    async def lookup(self, account_number: str) -> AccountRecord | None:
        """The account with this number, or None."""
        ...

    async def issue_temporary_password(
        self, account_number: str, temporary: TemporaryPassword
    ) -> Applied:
        """Make `temporary` the account's only password (revoking the previous one).

        Raises PasswordNotSet when it definitely was not set, DirectoryUnavailable when the
        directory could not be asked; Applied.ambiguous when it may or may not have been.
        """
        ...

    async def verify_password(self, account_number: str, password: str) -> PasswordCheck:
        """Whether the password opens the account, and whether it must be changed."""
        ...

    async def change_password(
        self, account_number: str, current_password: str, new_password: str
    ) -> None:
        """Set a new long-term password; raises PasswordChangeRefused."""
        ...


class SqlAccountDirectory:
    """The accounts directory over the gateway's tables; the caller owns the transaction."""

    def __init__(
        self,
        session: AsyncSession,
        settings: Settings,
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._session = session
        self._settings = settings
        self._clock = clock

    async def lookup(self, account_number: str) -> AccountRecord | None:
        """The account with this number, or None; one query either way (§6.2)."""
        stmt = (
            select(
                Account.account_number,
                Account.login,
                Account.full_name,
                Account.email,
                AccountPhone.e164,
                AccountPhone.line_type,
            )
            .outerjoin(AccountPhone, AccountPhone.account_id == Account.id)
            .where(Account.account_number == account_number.strip())
            .order_by(AccountPhone.position, AccountPhone.id)
        )
        rows = (await self._session.execute(stmt)).all()
        if not rows:
            return None
        first = rows[0]
        phones = tuple(
            Phone(e164=row.e164, line_type=LineType(row.line_type))
            for row in rows
            if row.e164 is not None
        )
        return AccountRecord(
            account_number=first.account_number,
            login=first.login,
            full_name=first.full_name,
            email=first.email,
            phones=phones,
        )

    async def issue_temporary_password(
        self, account_number: str, temporary: TemporaryPassword
    ) -> Applied:
        """Store the temporary password's hash, revoking the previous password."""
        number = account_number.strip()
        stmt = (
            select(Account)
            .where(Account.account_number == number)
            .options(lazyload(Account.phones))
        )
        account = (await self._session.scalars(stmt)).one_or_none()
        if account is None:
            raise PasswordNotSet("not_found")
        password = temporary.password
        now = self._clock()
        expires_at = temporary.expires_at
        credential = account.credential
        if credential is None:
            account.credential = Credential(
                password_hash=await hash_in_pool(password),
                is_temporary=True,
                expires_at=expires_at,
                used_at=None,
                changed_at=now,
            )
        else:
            # Overwriting the one hash is what revokes the previous password.
            credential.password_hash = await hash_in_pool(password)
            credential.is_temporary = True
            credential.expires_at = expires_at
            credential.used_at = None
            credential.changed_at = now
        await self._session.flush()
        return Applied.applied

    async def verify_password(self, account_number: str, password: str) -> PasswordCheck:
        """Whether the password opens the account, and whether it must be changed."""
        credential = await self._credential(account_number)
        if credential is None:
            await verify_nothing_in_pool(password)
            return REFUSED
        if not await verify_in_pool(credential.password_hash, password):
            return REFUSED
        if not self._usable(credential):
            return REFUSED
        return PasswordCheck(accepted=True, change_required=credential.is_temporary)

    async def change_password(
        self, account_number: str, current_password: str, new_password: str
    ) -> None:
        """Set a new long-term password; a temporary current password is consumed."""
        credential = await self._credential(account_number)
        if credential is None:
            await verify_nothing_in_pool(current_password)
            raise PasswordChangeRefused(ChangeRefusal.current_not_accepted)
        if not await verify_in_pool(credential.password_hash, current_password) or not self._usable(
            credential
        ):
            raise PasswordChangeRefused(ChangeRefusal.current_not_accepted)
        if len(new_password) < MIN_PASSWORD_LENGTH:
            raise PasswordChangeRefused(ChangeRefusal.too_short)
        if len(new_password) > MAX_PASSWORD_LENGTH:
            raise PasswordChangeRefused(ChangeRefusal.too_long)
        # The temporary password must never become the long-term one.
        if new_password == current_password:
            raise PasswordChangeRefused(ChangeRefusal.same_as_current)

        now = self._clock()
        values: dict[str, object] = {
            "password_hash": await hash_in_pool(new_password),
            "is_temporary": False,
            "expires_at": None,
            "changed_at": now,
        }
        if credential.is_temporary:
            values["used_at"] = now
        # Compare-and-swap on the hash just verified: of two concurrent changes with the same
        # temporary password only one finds it still in place, so it is used once.
        conditions = [
            Credential.account_id == credential.account_id,
            Credential.password_hash == credential.password_hash,
        ]
        if credential.is_temporary:
            conditions.append(Credential.used_at.is_(None))
        stmt = (
            update(Credential)
            .where(*conditions)
            .values(values)
            .returning(Credential.account_id)
            .execution_options(synchronize_session="fetch")
        )
        if (await self._session.execute(stmt)).scalar_one_or_none() is None:
            raise PasswordChangeRefused(ChangeRefusal.current_not_accepted)
        await self._session.flush()

    async def _credential(self, account_number: str) -> Credential | None:
        # One query whether the account is unknown, has no password, or has one.
        stmt = (
            select(Credential)
            .join(Account, Credential.account_id == Account.id)
            .where(Account.account_number == account_number.strip())
        )
        return (await self._session.scalars(stmt)).one_or_none()

    def _usable(self, credential: Credential) -> bool:
        if not credential.is_temporary:
            return True
        if credential.used_at is not None or credential.expires_at is None:
            return False
        return self._clock() < credential.expires_at
