"""The reference cabinet's own SQLite store: accounts, sign-in sessions and idempotency keys.

Plain `sqlite3`, one short-lived connection per unit of work. Every write runs in one
`BEGIN IMMEDIATE` transaction, so a §11 PUT (new password, old one revoked, sessions ended,
idempotency key completed) is one commit.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts (
    account_number TEXT PRIMARY KEY,
    login TEXT,
    full_name TEXT NOT NULL DEFAULT '',
    phones TEXT NOT NULL DEFAULT '[]',
    email TEXT,
    status TEXT NOT NULL DEFAULT 'active',
    password_hash TEXT,
    password_expires_at TEXT,
    must_change INTEGER NOT NULL DEFAULT 0,
    password_set_at TEXT,
    password_channel TEXT,
    password_reference TEXT
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    account_number TEXT NOT NULL REFERENCES accounts(account_number) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    must_change INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_account ON sessions(account_number);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    state TEXT NOT NULL,
    status_code INTEGER,
    response_body TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def to_text(moment: datetime) -> str:
    """A UTC timestamp as stored: ISO 8601 with microseconds, so text order is time order."""
    utc = moment.astimezone(UTC)
    # Not strftime alone: its %Y drops the leading zeros of years before 1000 (fromisoformat
    # refuses those).
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S.%f}Z"


def from_text(value: str) -> datetime:
    """The inverse of to_text (also reads RFC 3339 `...Z` without fractions)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


class KeyState(StrEnum):
    """Where an idempotency key stands."""

    in_progress = "in_progress"
    completed = "completed"


@dataclass(frozen=True, slots=True)
class Account:
    """One resident's account as the cabinet keeps it."""

    account_number: str
    login: str | None
    full_name: str
    phones: tuple[str, ...]
    email: str | None
    status: str
    password_hash: str | None
    password_expires_at: datetime | None
    must_change: bool

    def __repr__(self) -> str:
        # The password hash stays out of reprs and logs.
        return f"Account(account_number={self.account_number!r}, status={self.status!r})"


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """A stored idempotency key: its request fingerprint and, once completed, its answer."""

    key: str
    fingerprint: str
    state: KeyState
    status_code: int | None
    response_body: str | None
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Session:
    """A resident's sign-in session; `must_change` sessions may only change the password."""

    account_number: str
    expires_at: datetime
    must_change: bool


def _account(row: sqlite3.Row) -> Account:
    expires = row["password_expires_at"]
    return Account(
        account_number=row["account_number"],
        login=row["login"],
        full_name=row["full_name"],
        phones=tuple(json.loads(row["phones"])),
        email=row["email"],
        status=row["status"],
        password_hash=row["password_hash"],
        password_expires_at=from_text(expires) if expires else None,
        must_change=bool(row["must_change"]),
    )


class Store:
    """All queries of the reference cabinet."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        with self._connect() as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: commits on success, rolls back on any error."""
        connection = self._connect()
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
        finally:
            connection.close()

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection for reads outside a write transaction."""
        connection = self._connect()
        try:
            yield connection
        finally:
            connection.close()

    # -- meta

    def fingerprint_key(self) -> bytes:
        """This database's own random key for request fingerprints (made on first use)."""
        with self.transaction() as connection:
            row = connection.execute(
                "SELECT value FROM meta WHERE name = 'fingerprint_key'"
            ).fetchone()
            if row is not None:
                return bytes.fromhex(row["value"])
            key = secrets.token_bytes(32)
            connection.execute(
                "INSERT INTO meta (name, value) VALUES ('fingerprint_key', ?)", (key.hex(),)
            )
            return key

    # -- accounts

    @staticmethod
    def get_account(connection: sqlite3.Connection, account_number: str) -> Account | None:
        """The account with this number, or None."""
        row = connection.execute(
            "SELECT * FROM accounts WHERE account_number = ?", (account_number,)
        ).fetchone()
        return _account(row) if row is not None else None

    def find_account(self, account_number: str) -> Account | None:
        """The account with this number, or None (its own read)."""
        with self.reading() as connection:
            return self.get_account(connection, account_number)

    @staticmethod
    def upsert_account(
        connection: sqlite3.Connection,
        account_number: str,
        login: str | None,
        full_name: str,
        phones: Sequence[str],
        email: str | None,
        status: str,
        initial_password_hash: str,
    ) -> bool:
        """Insert an account with its initial password, or update its directory fields.

        An existing account keeps its password and sessions. Returns True if it was created.
        """
        exists = connection.execute(
            "SELECT 1 FROM accounts WHERE account_number = ?", (account_number,)
        ).fetchone()
        phones_json = json.dumps(list(phones), ensure_ascii=False)
        if exists:
            connection.execute(
                "UPDATE accounts SET login = ?, full_name = ?, phones = ?, email = ?, status = ?"
                " WHERE account_number = ?",
                (login, full_name, phones_json, email, status, account_number),
            )
            return False
        connection.execute(
            "INSERT INTO accounts (account_number, login, full_name, phones, email, status,"
            " password_hash, must_change) VALUES (?, ?, ?, ?, ?, ?, ?, 0)",
            (account_number, login, full_name, phones_json, email, status, initial_password_hash),
        )
        return True

    @staticmethod
    def set_status(connection: sqlite3.Connection, account_number: str, status: str) -> None:
        """Change an account's status (e.g. `disabled`)."""
        connection.execute(
            "UPDATE accounts SET status = ? WHERE account_number = ?", (status, account_number)
        )

    @staticmethod
    def set_temporary_password(
        connection: sqlite3.Connection,
        account_number: str,
        password_hash: str,
        expires_at: datetime,
        channel: str,
        reference: str,
        now: datetime,
    ) -> None:
        """Replace the password with a temporary one that must be changed; end all sessions."""
        connection.execute(
            "UPDATE accounts SET password_hash = ?, password_expires_at = ?, must_change = 1,"
            " password_set_at = ?, password_channel = ?, password_reference = ?"
            " WHERE account_number = ?",
            (password_hash, to_text(expires_at), to_text(now), channel, reference, account_number),
        )
        connection.execute("DELETE FROM sessions WHERE account_number = ?", (account_number,))

    @staticmethod
    def consume_temporary_password(
        connection: sqlite3.Connection, account_number: str, password_hash: str
    ) -> bool:
        """Spend a temporary password (single use); False if it was already spent or replaced."""
        cursor = connection.execute(
            "UPDATE accounts SET password_hash = NULL, password_expires_at = NULL"
            " WHERE account_number = ? AND password_hash = ? AND must_change = 1",
            (account_number, password_hash),
        )
        return cursor.rowcount == 1

    @staticmethod
    def set_own_password(
        connection: sqlite3.Connection, account_number: str, password_hash: str, now: datetime
    ) -> None:
        """Store the resident's own new password (no expiry, nothing to change)."""
        connection.execute(
            "UPDATE accounts SET password_hash = ?, password_expires_at = NULL, must_change = 0,"
            " password_set_at = ?, password_channel = NULL, password_reference = NULL"
            " WHERE account_number = ?",
            (password_hash, to_text(now), account_number),
        )

    # -- sessions

    @staticmethod
    def add_session(
        connection: sqlite3.Connection,
        token_hash: str,
        account_number: str,
        now: datetime,
        expires_at: datetime,
        must_change: bool,
    ) -> None:
        """Record a sign-in session by the hash of its cookie token."""
        connection.execute(
            "INSERT INTO sessions (token_hash, account_number, created_at, expires_at, must_change)"
            " VALUES (?, ?, ?, ?, ?)",
            (token_hash, account_number, to_text(now), to_text(expires_at), int(must_change)),
        )

    @staticmethod
    def get_session(connection: sqlite3.Connection, token_hash: str) -> Session | None:
        """The session with this token hash, or None."""
        row = connection.execute(
            "SELECT account_number, expires_at, must_change FROM sessions WHERE token_hash = ?",
            (token_hash,),
        ).fetchone()
        if row is None:
            return None
        return Session(
            row["account_number"], from_text(row["expires_at"]), bool(row["must_change"])
        )

    @staticmethod
    def delete_session(connection: sqlite3.Connection, token_hash: str) -> None:
        """End one session."""
        connection.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    @staticmethod
    def delete_sessions_of(connection: sqlite3.Connection, account_number: str) -> None:
        """End every session of an account."""
        connection.execute("DELETE FROM sessions WHERE account_number = ?", (account_number,))

    @staticmethod
    def count_sessions(connection: sqlite3.Connection, account_number: str) -> int:
        """How many sessions the account has."""
        row = connection.execute(
            "SELECT COUNT(*) AS n FROM sessions WHERE account_number = ?", (account_number,)
        ).fetchone()
        return int(row["n"])

    # -- idempotency keys

    @staticmethod
    def get_key(connection: sqlite3.Connection, key: str) -> IdempotencyRecord | None:
        """The stored idempotency key, or None."""
        row = connection.execute("SELECT * FROM idempotency_keys WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return IdempotencyRecord(
            key=row["key"],
            fingerprint=row["fingerprint"],
            state=KeyState(row["state"]),
            status_code=row["status_code"],
            response_body=row["response_body"],
            updated_at=from_text(row["updated_at"]),
        )

    @staticmethod
    def claim_key(
        connection: sqlite3.Connection, key: str, fingerprint: str, now: datetime
    ) -> None:
        """Mark a key as in progress (a fresh key, or a stale claim that never completed)."""
        connection.execute(
            "INSERT INTO idempotency_keys (key, fingerprint, state, created_at, updated_at)"
            " VALUES (?, ?, 'in_progress', ?, ?)"
            " ON CONFLICT(key) DO UPDATE SET fingerprint = excluded.fingerprint,"
            " state = 'in_progress', updated_at = excluded.updated_at",
            (key, fingerprint, to_text(now), to_text(now)),
        )

    @staticmethod
    def complete_key(
        connection: sqlite3.Connection,
        key: str,
        status_code: int,
        response_body: str | None,
        now: datetime,
    ) -> None:
        """Record the final answer for a key, so a repeat gets the same status."""
        connection.execute(
            "UPDATE idempotency_keys SET state = 'completed', status_code = ?, response_body = ?,"
            " updated_at = ? WHERE key = ?",
            (status_code, response_body, to_text(now), key),
        )

    @staticmethod
    def release_key(connection: sqlite3.Connection, key: str) -> None:
        """Forget an in-progress claim whose request failed before completing."""
        connection.execute(
            "DELETE FROM idempotency_keys WHERE key = ? AND state = 'in_progress'", (key,)
        )

    @staticmethod
    def purge_keys(connection: sqlite3.Connection, older_than: datetime) -> int:
        """Forget keys created before `older_than`; returns how many."""
        cursor = connection.execute(
            "DELETE FROM idempotency_keys WHERE created_at < ?", (to_text(older_than),)
        )
        return cursor.rowcount
