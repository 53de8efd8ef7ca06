"""Residents' sign-in: own or temporary password, forced change, sessions."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum

from cabinet_reference.config import CabinetConfig
from cabinet_reference.passwords import Passwords
from cabinet_reference.store import Account, Session, Store


class SignInResult(StrEnum):
    """How a sign-in attempt ended."""

    signed_in = "signed_in"
    must_change = "must_change"
    refused = "refused"
    expired = "expired"


class ChangeResult(StrEnum):
    """How a password change ended."""

    changed = "changed"
    mismatch = "mismatch"
    policy = "policy"
    signed_out = "signed_out"


@dataclass(frozen=True, slots=True)
class SignIn:
    """The result of a sign-in and, unless refused, the new session's cookie token."""

    result: SignInResult
    token: str | None = None

    def __repr__(self) -> str:
        return f"SignIn(result={self.result!r})"


def token_hash(token: str) -> str:
    """How a session token is stored: its SHA-256, so a copy of the database opens no session."""
    return hashlib.sha256(token.encode()).hexdigest()


class Residents:
    """Sign-in, forced password change and sign-out."""

    def __init__(self, store: Store, passwords: Passwords, config: CabinetConfig) -> None:
        self._store = store
        self._passwords = passwords
        self._config = config

    def sign_in(self, account_number: str, password: str) -> SignIn:
        """Check the password; a temporary one is spent here and opens a change-only session."""
        account = self._store.find_account(account_number.strip())
        if account is None or account.status != "active":
            self._passwords.matches(None, password)
            return SignIn(SignInResult.refused)
        if not self._passwords.matches(account.password_hash, password):
            return SignIn(SignInResult.refused)
        now = self._config.clock()
        if account.must_change:
            if account.password_expires_at is None or account.password_expires_at <= now:
                return SignIn(SignInResult.expired)
            return self._open_change_session(account)
        return SignIn(SignInResult.signed_in, self._open_session(account.account_number, False))

    def _open_change_session(self, account: Account) -> SignIn:
        assert account.password_hash is not None
        token = secrets.token_urlsafe(32)
        now = self._config.clock()
        with self._store.transaction() as connection:
            # Single use: the temporary password is gone once it has opened this session.
            if not self._store.consume_temporary_password(
                connection, account.account_number, account.password_hash
            ):
                return SignIn(SignInResult.refused)
            self._store.add_session(
                connection,
                token_hash(token),
                account.account_number,
                now,
                now + self._config.change_password_lifetime,
                must_change=True,
            )
        return SignIn(SignInResult.must_change, token)

    def _open_session(self, account_number: str, must_change: bool) -> str:
        token = secrets.token_urlsafe(32)
        now = self._config.clock()
        with self._store.transaction() as connection:
            self._store.add_session(
                connection,
                token_hash(token),
                account_number,
                now,
                now + self._config.session_lifetime,
                must_change,
            )
        return token

    def session(self, token: str | None) -> Session | None:
        """The live session for a cookie token, or None."""
        if not token:
            return None
        with self._store.reading() as connection:
            session = self._store.get_session(connection, token_hash(token))
        if session is None or session.expires_at <= self._config.clock():
            return None
        return session

    def account(self, account_number: str) -> Account | None:
        """The account a session belongs to."""
        return self._store.find_account(account_number)

    def change_password(
        self, token: str, new_password: str, repeated: str
    ) -> tuple[ChangeResult, str | None]:
        """Set the resident's own password; ends every session and returns a fresh token."""
        if not secrets.compare_digest(new_password.encode(), repeated.encode()):
            return ChangeResult.mismatch, None
        if not self._config.policy.allows(new_password):
            return ChangeResult.policy, None
        password_hash = self._passwords.hash(new_password)
        new_token = secrets.token_urlsafe(32)
        now = self._config.clock()
        with self._store.transaction() as connection:
            # Checked inside the transaction: a PUT from the gateway may have ended the session
            # (and set a new temporary password) since the form was shown.
            session = self._store.get_session(connection, token_hash(token))
            if session is None or session.expires_at <= now:
                return ChangeResult.signed_out, None
            self._store.set_own_password(connection, session.account_number, password_hash, now)
            self._store.delete_sessions_of(connection, session.account_number)
            self._store.add_session(
                connection,
                token_hash(new_token),
                session.account_number,
                now,
                now + self._config.session_lifetime,
                must_change=False,
            )
        return ChangeResult.changed, new_token

    def sign_out(self, token: str | None) -> None:
        """End the session of this cookie token, if any."""
        if token:
            with self._store.transaction() as connection:
                self._store.delete_session(connection, token_hash(token))
