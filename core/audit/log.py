"""Audit trail: every recovery step as a row, with pseudonyms and masks instead of raw values.

The rows form a hash chain (§6.7): each stores the hash of the row before it and a keyed HMAC over
its own contents and that link. The key derives from the server secret, so someone who can write
to the database but does not hold the key cannot edit, delete or insert a row and re-seal the
rest of the chain to match.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from core.kit.phones import mask_account
from core.models import AuditEvent
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.metrics import RECOVERY_EVENTS

DetailValue = str | int | bool | None

# What the first link points back to.
GENESIS_HASH = "0" * 64
# Bumped if the canonical form ever changes, so that old and new rows cannot be confused.
CANONICAL_VERSION = "audit-chain/1"
# pg_advisory_xact_lock key of the chain ("EIRCAUDT"): one appender at a time, from the chaining
# just before commit until the commit.
CHAIN_LOCK_KEY = 0x4549_5243_4155_4454
VERIFY_BATCH = 1000


def canonical_form(
    seq: int,
    created_at: datetime,
    event: str,
    channel: str,
    session_ref: str,
    account_ref: str | None,
    account_masked: str | None,
    detail: str,
    prev_hash: str,
) -> str:
    """The exact text a row's hash seals: a JSON array, so no field can bleed into the next."""
    return json.dumps(
        [
            CANONICAL_VERSION,
            seq,
            created_at.astimezone(UTC).isoformat(timespec="microseconds"),
            event,
            channel,
            session_ref,
            account_ref,
            account_masked,
            detail,
            prev_hash,
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    )


def seal(keyring: Keyring, canonical: str) -> str:
    """The keyed hash of a row's canonical form."""
    return keyring.keyed_hash("audit", canonical)


class RowFields(Protocol):
    """What a row's hash covers besides its link: an `AuditEvent`, or a selected row of one."""

    created_at: datetime
    event: str
    channel: str
    session_ref: str
    account_ref: str | None
    account_masked: str | None
    detail: str


def seal_row(keyring: Keyring, row: RowFields, seq: int, prev_hash: str) -> str:
    """The keyed hash of one row as the link `seq` after `prev_hash`."""
    return seal(
        keyring,
        canonical_form(
            seq,
            row.created_at,
            row.event,
            row.channel,
            row.session_ref,
            row.account_ref,
            row.account_masked,
            row.detail,
            prev_hash,
        ),
    )


class AuditLog:
    """Writes audit events into the caller's transaction; they are chained when it commits.

    Chaining takes the one appender lock of the whole trail. Taking it at the first event would
    hold it across everything else the request does (hashing a password, Redis, the provider);
    taking it at commit holds it for one SELECT and the INSERTs.
    """

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    async def record(
        self,
        event: str,
        *,
        channel: str,
        session_ref: str,
        account_number: str | None = None,
        **detail: DetailValue,
    ) -> None:
        """Add one event; `detail` must hold no secrets (codes, passwords, full numbers)."""
        row = AuditEvent(
            created_at=utcnow(),
            event=event,
            channel=channel,
            session_ref=session_ref[:64],
            account_ref=self._keyring.reference(account_number) if account_number else None,
            account_masked=mask_account(account_number) if account_number else None,
            detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
        )
        pending: _Pending = self._session.sync_session.info.setdefault(
            _PENDING, _Pending(self._keyring)
        )
        pending.rows.append(row)
        RECOVERY_EVENTS.labels(event=event, channel=channel).inc()


_PENDING = "audit.pending"


@dataclass(slots=True)
class _Pending:
    """Events recorded in a transaction and not chained yet."""

    keyring: Keyring
    rows: list[AuditEvent] = field(default_factory=list)


def has_pending_events(session: AsyncSession) -> bool:
    """Whether events recorded in this session wait for its commit."""
    pending: _Pending | None = session.sync_session.info.get(_PENDING)
    return bool(pending and pending.rows)


@event.listens_for(Session, "before_commit")
def _chain_pending(session: Session) -> None:
    """Chain and add the transaction's events, just before it commits (the flush follows)."""
    pending: _Pending | None = session.info.pop(_PENDING, None)
    if not pending or not pending.rows:
        return
    _lock_chain(session)
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash)
        .where(AuditEvent.seq.is_not(None))
        .order_by(AuditEvent.seq.desc())
        .limit(1)
    ).first()
    seq = (last.seq or 0) if last else 0
    # A cleared hash on the last link is tampering that `verify_chain` reports; linking to the
    # empty string keeps appending (the recovery must go on) without hiding it.
    prev_hash = (last.hash or "") if last else GENESIS_HASH
    for row in pending.rows:
        seq += 1
        row.seq = seq
        row.prev_hash = prev_hash
        row.hash = prev_hash = seal_row(pending.keyring, row, seq, row.prev_hash)
    # One statement for all of them (an executemany): added to the session, the ORM inserted
    # them one at a time, to read each new id back, which nobody reads.
    session.execute(
        insert(AuditEvent),
        [{column: getattr(row, column) for column in _STORED} for row in pending.rows],
    )


# What an event row stores (its id is the database's).
_STORED = (
    "created_at",
    "event",
    "channel",
    "session_ref",
    "account_ref",
    "account_masked",
    "detail",
    "seq",
    "prev_hash",
    "hash",
)


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    """A rolled-back transaction records nothing."""
    session.info.pop(_PENDING, None)


def _lock_chain(session: Session) -> None:
    """Make this transaction the only appender until it ends, so the chain cannot fork."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK_KEY})
    elif dialect == "sqlite":
        # SQLite allows one writer at a time, but the driver opens the transaction only at the
        # first write: a plain SELECT of the last hash could read a link that another
        # connection is about to extend. A write that changes nothing takes the write lock
        # (waiting out the busy timeout) first, so the SELECT sees the true last link.
        session.execute(text("UPDATE audit_events SET seq = seq WHERE 0"))
    # Elsewhere the unique `seq` still turns a race into a failed insert, never a fork.


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first row at which the chain does not hold, and what is wrong with it."""

    event_id: int
    problem: str


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of walking the whole audit trail."""

    # Sealed rows that checked out (all of them when the chain is intact).
    events: int
    # Rows from before the chain existed, in front of its first link.
    unsealed: int
    # The hash of the last link when intact: worth noting down outside the database, because
    # removing rows from the end of a chain leaves no trace inside it.
    head: str | None
    broken: ChainBreak | None = None

    @property
    def intact(self) -> bool:
        """Whether every link checked out."""
        return self.broken is None


async def verify_chain(session: AsyncSession, keyring: Keyring) -> ChainReport:
    """Walk every audit row in id order and report the first link that does not hold."""
    events = unsealed = 0
    previous: tuple[int, str] | None = None  # (seq, hash) of the last good link
    after_id = 0
    while True:
        rows = (
            await session.execute(
                select(
                    AuditEvent.id,
                    AuditEvent.seq,
                    AuditEvent.created_at,
                    AuditEvent.event,
                    AuditEvent.channel,
                    AuditEvent.session_ref,
                    AuditEvent.account_ref,
                    AuditEvent.account_masked,
                    AuditEvent.detail,
                    AuditEvent.prev_hash,
                    AuditEvent.hash,
                )
                .where(AuditEvent.id > after_id)
                .order_by(AuditEvent.id)
                .limit(VERIFY_BATCH)
            )
        ).all()
        if not rows:
            break
        for row in rows:
            event_id, seq, prev_hash, row_hash = row.id, row.seq, row.prev_hash, row.hash
            if seq is None and prev_hash is None and row_hash is None and previous is None:
                unsealed += 1
                continue
            if seq is None or prev_hash is None or row_hash is None:
                return _broken(events, unsealed, event_id, "its chain fields were cleared")
            expected = seal_row(keyring, row, seq, prev_hash)
            if not hmac.compare_digest(expected, row_hash):
                return _broken(
                    events,
                    unsealed,
                    event_id,
                    "its contents do not match its hash (edited, or sealed without the key)",
                )
            problem = _link_problem(previous, seq, prev_hash)
            if problem:
                return _broken(events, unsealed, event_id, problem)
            events += 1
            previous = (seq, row_hash)
        after_id = rows[-1].id
    return ChainReport(events, unsealed, previous[1] if previous else None)


def _link_problem(previous: tuple[int, str] | None, seq: int, prev_hash: str) -> str | None:
    """What is wrong with how a row (whose own hash holds) links to the row before it."""
    expected_seq, expected_prev = (previous[0] + 1, previous[1]) if previous else (1, GENESIS_HASH)
    if seq == expected_seq and hmac.compare_digest(prev_hash, expected_prev):
        return None
    if seq > expected_seq:
        missing = seq - expected_seq
        return (
            f"{missing} event{'s' if missing > 1 else ''} missing before it "
            f"(link #{seq} follows #{expected_seq - 1}: deleted or moved)"
        )
    if seq < expected_seq:
        return f"out of order (link #{seq} after #{expected_seq - 1}: moved or inserted)"
    return "it does not link to the event before it (prev_hash differs: replaced or inserted)"


def _broken(events: int, unsealed: int, event_id: int, problem: str) -> ChainReport:
    return ChainReport(events, unsealed, None, ChainBreak(event_id, problem))


async def case_history(
    session: AsyncSession, keyring: Keyring, account_number: str
) -> list[AuditEvent]:
    """Every audit event of one account, oldest first (found by its keyed pseudonym)."""
    rows = await session.scalars(
        select(AuditEvent)
        .where(AuditEvent.account_ref == keyring.reference(account_number))
        .order_by(AuditEvent.id)
    )
    return list(rows)
