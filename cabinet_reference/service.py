"""What the §11 operations decide: look-ups and temporary passwords with idempotency keys."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cabinet_reference.config import CabinetConfig
from cabinet_reference.passwords import Passwords
from cabinet_reference.store import KeyState, Store

log = logging.getLogger("cabinet_reference")

_RFC3339_UTC_SECONDS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$"


class TemporaryPasswordRequest(BaseModel):
    """The body of `PUT …/temporary-password`; unknown fields are ignored (§11)."""

    model_config = ConfigDict(extra="ignore", strict=True, hide_input_in_errors=True)

    password: str = Field(repr=False)
    expires_at: str = Field(pattern=_RFC3339_UTC_SECONDS)
    must_change: Literal[True]
    channel: Literal["voice", "sms", "console"]
    # It travels as the Idempotency-Key header too, so only visible ASCII can match it faithfully.
    reference: str = Field(min_length=1, max_length=64, pattern=r"^[!-~]+$")

    @field_validator("expires_at")
    @classmethod
    def _a_real_moment(cls, value: str) -> str:
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")  # raises on 2026-02-30 and the like
        return value

    def expiry(self) -> datetime:
        """`expires_at` as an aware UTC datetime."""
        return datetime.strptime(self.expires_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    """An answer of the API: a status and a JSON body (None for 204)."""

    status: int
    body: dict[str, str] | None = None


NO_CONTENT = Outcome(204)
NOT_FOUND = Outcome(404, {"error": "not_found"})
DISABLED = Outcome(403, {"error": "disabled"})
PASSWORD_POLICY = Outcome(422, {"error": "password_policy"})
IDEMPOTENCY_MISMATCH = Outcome(422, {"error": "idempotency_mismatch"})
IN_PROGRESS = Outcome(409, {"error": "in_progress"})


class Directory:
    """The cabinet's side of §11."""

    def __init__(self, store: Store, passwords: Passwords, config: CabinetConfig) -> None:
        self._store = store
        self._passwords = passwords
        self._config = config
        self._fingerprint_key = store.fingerprint_key()

    def look_up(self, account_number: str) -> dict[str, object] | None:
        """The §11 look-up body for an account, or None if there is no such account."""
        account = self._store.find_account(account_number)
        if account is None:
            return None
        return {
            "account_number": account.account_number,
            "login": account.login,
            "phones": list(account.phones),
            "email": account.email,
            "status": account.status,
        }

    def fingerprint(self, account_number: str, body: object) -> str:
        """A keyed hash of what a request asks for (no password in clear among the keys)."""
        canonical = json.dumps(
            {"account_number": account_number, "body": body},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return hmac.new(self._fingerprint_key, canonical.encode(), hashlib.sha256).hexdigest()

    def set_temporary_password(
        self, account_number: str, request: TemporaryPasswordRequest, fingerprint: str
    ) -> Outcome:
        """Apply a PUT at most once per idempotency key (= `request.reference`)."""
        key = request.reference
        early = self._claim(key, fingerprint)
        if early is not None:
            return early
        try:
            outcome = self._apply(account_number, request, key)
        except BaseException:
            with self._store.transaction() as connection:
                self._store.release_key(connection, key)
            raise
        log.info(
            "temporary password request account=%s channel=%s reference=%s status=%s",
            account_number,
            request.channel,
            key,
            outcome.status,
        )
        return outcome

    def _claim(self, key: str, fingerprint: str) -> Outcome | None:
        """Take the key for this request, or the answer it gets without doing anything."""
        now = self._config.clock()
        with self._store.transaction() as connection:
            self._store.purge_keys(connection, now - self._config.key_retention)
            record = self._store.get_key(connection, key)
            if record is not None:
                if not hmac.compare_digest(record.fingerprint, fingerprint):
                    return IDEMPOTENCY_MISMATCH
                if record.state is KeyState.completed:
                    assert record.status_code is not None
                    body = json.loads(record.response_body) if record.response_body else None
                    return Outcome(record.status_code, body)
                if now - record.updated_at < self._config.stale_claim_after:
                    return IN_PROGRESS
            self._store.claim_key(connection, key, fingerprint, now)
        return None

    def _apply(self, account_number: str, request: TemporaryPasswordRequest, key: str) -> Outcome:
        # Hashing is slow; it runs before the write transaction so the lock is held briefly.
        allowed = self._config.policy.allows(request.password)
        password_hash = self._passwords.hash(request.password) if allowed else None
        now = self._config.clock()
        with self._store.transaction() as connection:
            account = self._store.get_account(connection, account_number)
            if account is None:
                outcome = NOT_FOUND
            elif account.status != "active":
                outcome = DISABLED
            elif password_hash is None:
                outcome = PASSWORD_POLICY
            else:
                self._store.set_temporary_password(
                    connection,
                    account_number,
                    password_hash,
                    request.expiry(),
                    request.channel,
                    key,
                    now,
                )
                outcome = NO_CONTENT
            body = json.dumps(outcome.body) if outcome.body is not None else None
            self._store.complete_key(connection, key, outcome.status, body, now)
        return outcome
