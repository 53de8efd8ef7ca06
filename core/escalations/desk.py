"""The operator desk: the queue of escalations and what an operator may do with a case.

An operator never sees or chooses a temporary password: the desk asks the recovery flow to issue
one and send it to the mobile on file, exactly as a completed self-service recovery does (the
old password is revoked, the contacts are notified, every step is audited).
"""

from __future__ import annotations

import secrets
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

import structlog
from redis.asyncio import Redis
from sqlalchemy import ColumnElement, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.accounts.directory import AccountDirectory
from core.audit.log import AuditLog
from core.delivery.outbox import Delivery
from core.escalations.repository import OPEN_STATUSES
from core.kit.phones import mask_account, mask_phone
from core.models import AuditEvent, Escalation, EscalationStatus
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.limits import Check, Decision, Limit, RateLimiter
from core.recovery.service import Attempt, Channel, Purpose, RecoveryService
from voice_prompts import Language

log = structlog.get_logger(__name__)

# The billing centre's day: "resolved today" and the times shown in the console.
DESK_TIMEZONE = ZoneInfo("Europe/Moscow")
HISTORY_LIMIT = 200
NOTE_MAX_LENGTH = 2000
AUDIT_CHANNEL = "console"
# Credential sends per case (§6.15): the first by the operator, a second only by a supervisor.
MAX_SENDS_PER_CASE = 2


class Refusal(StrEnum):
    """Why the desk did not do what the operator asked (the console words each one)."""

    not_found = "not_found"
    closed = "closed"
    taken_by_other = "taken_by_other"
    identity_not_confirmed = "identity_not_confirmed"
    account_missing = "account_missing"
    account_mismatch = "account_mismatch"
    unknown_account = "unknown_account"
    no_mobile = "no_mobile"
    not_deliverable = "not_deliverable"
    note_required = "note_required"
    second_send_needs_supervisor = "second_send_needs_supervisor"
    sends_exhausted = "sends_exhausted"
    limited = "limited"


class DeskRefused(Exception):
    """The action was refused; `reason` says why. Carries no personal data."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason.value)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Sent:
    """What the operator may be told after a send: where it went, masked."""

    purpose: Purpose
    to_masked: str


@dataclass(frozen=True, slots=True)
class DeskStats:
    """What a supervisor sees."""

    by_status: dict[str, int]
    open_by_kind: dict[str, int]
    open_by_reason: dict[str, int]
    waiting: int
    oldest_wait: timedelta | None
    median_wait: timedelta | None
    resolved_today: dict[str, int] = field(default_factory=dict)


def mask_phone_last4(e164: str | None) -> str:
    """A phone with only its last four digits showing: +7•••••••6789."""
    if not e164:
        return "—"
    digits = e164.lstrip("+")
    if len(digits) <= 4:
        return "•" * len(digits)
    return "+" + "•" * (len(digits) - 4) + digits[-4:]


def case_ref(escalation_id: int) -> str:
    """The session reference operator actions are audited under."""
    return f"escalation:{escalation_id}"


class OperatorDesk:
    """Queries and actions on escalations, in the caller's transaction."""

    def __init__(
        self,
        *,
        session: AsyncSession,
        settings: Settings,
        keyring: Keyring,
        directory: AccountDirectory,
        delivery: Delivery,
        recovery: RecoveryService,
        audit: AuditLog,
        redis: Redis,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._limits = RateLimiter(redis, settings, keyring)
        self._session = session
        self._settings = settings
        self._keyring = keyring
        self._directory = directory
        self._delivery = delivery
        self._recovery = recovery
        self._audit = audit
        self._clock = clock

    # -- queries ----------------------------------------------------------------------------

    async def queue(self) -> list[Escalation]:
        """Open cases, oldest first: whoever waited longest is served first."""
        rows = await self._session.scalars(
            select(Escalation)
            .where(Escalation.status.in_(OPEN_STATUSES))
            .order_by(Escalation.created_at, Escalation.id)
        )
        return list(rows)

    async def recently_closed(self, limit: int = 10) -> list[Escalation]:
        """The last cases closed, newest first."""
        rows = await self._session.scalars(
            select(Escalation)
            .where(Escalation.status.not_in(OPEN_STATUSES))
            .order_by(Escalation.closed_at.desc(), Escalation.id.desc())
            .limit(limit)
        )
        return list(rows)

    async def case(self, escalation_id: int) -> Escalation:
        """One case; raises DeskRefused(not_found)."""
        escalation = await self._session.get(Escalation, escalation_id)
        if escalation is None:
            raise DeskRefused(Refusal.not_found)
        return escalation

    async def history(self, escalation: Escalation) -> list[AuditEvent]:
        """The audit trail of a case: its account's events, its call or thread, its own actions."""
        refs = {case_ref(escalation.id)}
        if escalation.session_ref:
            refs.add(escalation.session_ref)
        conditions: list[ColumnElement[bool]] = [AuditEvent.session_ref.in_(refs)]
        if escalation.account_ref:
            conditions.append(AuditEvent.account_ref == escalation.account_ref)
        rows = await self._session.scalars(
            select(AuditEvent)
            .where(or_(*conditions))
            .order_by(AuditEvent.id.desc())
            .limit(HISTORY_LIMIT)
        )
        return list(reversed(list(rows)))

    async def stats(self) -> DeskStats:
        """Counts by status, kind and reason, waiting times, and who resolved what today."""
        by_status = {
            str(status): int(count)
            for status, count in await self._session.execute(
                select(Escalation.status, func.count()).group_by(Escalation.status)
            )
        }
        open_only = Escalation.status.in_(OPEN_STATUSES)
        open_by_kind = {
            str(kind): int(count)
            for kind, count in await self._session.execute(
                select(Escalation.kind, func.count()).where(open_only).group_by(Escalation.kind)
            )
        }
        open_by_reason = {
            str(reason): int(count)
            for reason, count in await self._session.execute(
                select(Escalation.reason, func.count())
                .where(open_only)
                .group_by(Escalation.reason)
                .order_by(func.count().desc())
            )
        }
        now = self._clock()
        created = list(
            await self._session.scalars(
                select(Escalation.created_at).where(Escalation.status == EscalationStatus.waiting)
            )
        )
        waits = sorted(now - moment for moment in created)
        # Compared in UTC: SQLite compares the stored timestamps as text.
        local_midnight = (
            now.astimezone(DESK_TIMEZONE)
            .replace(hour=0, minute=0, second=0, microsecond=0)
            .astimezone(UTC)
        )
        resolved_today = {
            str(operator): int(count)
            for operator, count in await self._session.execute(
                select(Escalation.operator, func.count())
                .where(
                    Escalation.status == EscalationStatus.resolved,
                    Escalation.closed_at >= local_midnight,
                )
                .group_by(Escalation.operator)
                .order_by(func.count().desc())
            )
        }
        return DeskStats(
            by_status=by_status,
            open_by_kind=open_by_kind,
            open_by_reason=open_by_reason,
            waiting=len(waits),
            oldest_wait=waits[-1] if waits else None,
            median_wait=statistics.median_low(waits) if waits else None,
            resolved_today=resolved_today,
        )

    # -- actions ----------------------------------------------------------------------------

    async def take(self, escalation_id: int, operator: str) -> Escalation:
        """Put a waiting case in progress under this operator."""
        escalation = await self._workable(escalation_id, operator)
        if escalation.status is EscalationStatus.waiting:
            escalation.status = EscalationStatus.in_progress
            escalation.operator = operator
            escalation.taken_at = self._clock()
            await self._session.flush()
            await self._record(escalation, "operator.case_taken", operator)
        return escalation

    async def send_credential(
        self,
        escalation_id: int,
        operator: str,
        *,
        purpose: Purpose,
        account_number: str,
        identity_confirmed: bool,
        supervisor: bool = False,
    ) -> Sent:
        """Issue a temporary password (or look up the login) and text it to the mobile on file.

        The operator confirmed the caller's identity on the phone and typed the account number
        the caller gave; it must be the case's account when the case has one. One send per case,
        a second only by a supervisor; sends are limited per operator and per account and count
        toward the global outbound budget (§6.15).
        """
        escalation = await self._workable(escalation_id, operator, supervisor=supervisor)
        if not identity_confirmed:
            raise DeskRefused(Refusal.identity_not_confirmed)
        number = "".join(account_number.split())[:64]
        if not number:
            raise DeskRefused(Refusal.account_missing)
        reference = self._keyring.reference(number)
        if escalation.account_ref is not None and not secrets.compare_digest(
            reference, escalation.account_ref
        ):
            await self._record(
                escalation, "operator.account_mismatch", operator, purpose=str(purpose)
            )
            raise DeskRefused(Refusal.account_mismatch)
        if not self._settings.account_number_regex.fullmatch(number):
            raise DeskRefused(Refusal.unknown_account)
        record = await self._directory.lookup(number)
        if record is None:
            raise DeskRefused(Refusal.unknown_account)
        mobile = record.first_mobile
        if mobile is None:
            raise DeskRefused(Refusal.no_mobile)
        # Checked before anything is issued: a password that cannot reach the resident must not
        # revoke the one they have.
        if not await self._delivery.deliverable(mobile.e164):
            raise DeskRefused(Refusal.not_deliverable)

        permit = await self._send_permit(escalation, operator, number, supervisor, purpose)
        if escalation.status is EscalationStatus.waiting:
            await self.take(escalation_id, operator)
        if escalation.account_ref is None:
            # The case now knows its account, so its history shows what follows.
            escalation.account_ref = reference
            escalation.account_masked = mask_account(number)
        attempt = Attempt(
            id=secrets.token_urlsafe(18),
            account_number=number,
            purpose=purpose,
            # The operator spoke with the resident on the phone: the notice says "hotline".
            channel=Channel.voice,
            session_ref=case_ref(escalation.id),
            language=Language.ru,
        )
        completion = await self._recovery.complete(
            attempt, case_ref(escalation.id), spoken=False, issued_via="console"
        )
        sent = completion is not None and completion.sent_by_sms
        # The secret in `completion` goes no further than this line.
        del completion
        await self._record(
            escalation,
            "operator.password_sent" if purpose is Purpose.password else "operator.login_sent",
            operator,
            account_number=number,
            to=mask_phone(mobile.e164),
            sent_by_sms=sent,
            send_number=escalation.credential_sends,
            by_supervisor=supervisor,
        )
        if not sent:
            await self._limits.release(permit)
            raise DeskRefused(Refusal.not_deliverable)
        log.info("desk.credential_sent", escalation=escalation.id, purpose=str(purpose))
        return Sent(purpose=purpose, to_masked=mask_phone_last4(mobile.e164))

    async def close(
        self,
        escalation_id: int,
        operator: str,
        *,
        status: EscalationStatus,
        note: str,
    ) -> Escalation:
        """Mark a case resolved (a note is required) or abandoned."""
        if status not in (EscalationStatus.resolved, EscalationStatus.abandoned):
            raise ValueError("a case closes as resolved or abandoned")
        escalation = await self._workable(escalation_id, operator)
        text = note.strip()[:NOTE_MAX_LENGTH]
        if status is EscalationStatus.resolved and not text:
            raise DeskRefused(Refusal.note_required)
        escalation.status = status
        escalation.operator = operator
        escalation.note = text or None
        escalation.closed_at = self._clock()
        if escalation.taken_at is None:
            escalation.taken_at = escalation.closed_at
        await self._session.flush()
        await self._record(
            escalation,
            f"operator.case_{status}",
            operator,
            note_length=len(text),
        )
        return escalation

    async def _send_permit(
        self,
        escalation: Escalation,
        operator: str,
        number: str,
        supervisor: bool,
        purpose: Purpose,
    ) -> Decision:
        """Claim one credential send on the case and count it against the limits, or refuse."""
        seen = escalation.credential_sends
        refusal = None
        if seen >= MAX_SENDS_PER_CASE:
            refusal = Refusal.sends_exhausted
        elif seen >= 1 and not supervisor:
            refusal = Refusal.second_send_needs_supervisor
        if refusal is not None:
            await self._record(
                escalation, "operator.send_refused", operator, purpose=str(purpose), reason=refusal
            )
            raise DeskRefused(refusal)
        permit = await self._limits.acquire(
            Check(Limit.console_sends_operator, operator),
            Check(Limit.console_sends_account, number),
            Check(Limit.global_outbound),
        )
        if not permit.allowed:
            await self._record(
                escalation,
                "operator.send_limited",
                operator,
                account_number=number,
                purpose=str(purpose),
                limit=permit.tripped,
            )
            raise DeskRefused(Refusal.limited)
        # Compare-and-set: of two clicks at once, one finds the count it read and sends.
        claimed = await self._session.execute(
            update(Escalation)
            .where(Escalation.id == escalation.id, Escalation.credential_sends == seen)
            .values(credential_sends=seen + 1)
            .returning(Escalation.id)
            .execution_options(synchronize_session="fetch")
        )
        if claimed.scalar_one_or_none() is None:
            await self._limits.release(permit)
            raise DeskRefused(Refusal.second_send_needs_supervisor)
        return permit

    async def _workable(
        self, escalation_id: int, operator: str, *, supervisor: bool = False
    ) -> Escalation:
        escalation = await self.case(escalation_id)
        if escalation.status not in OPEN_STATUSES:
            raise DeskRefused(Refusal.closed)
        if (
            not supervisor
            and escalation.status is EscalationStatus.in_progress
            and escalation.operator
            and escalation.operator != operator
        ):
            raise DeskRefused(Refusal.taken_by_other)
        return escalation

    async def _record(
        self,
        escalation: Escalation,
        event: str,
        operator: str,
        *,
        account_number: str | None = None,
        **detail: str | int | bool | None,
    ) -> None:
        await self._audit.record(
            event,
            channel=AUDIT_CHANNEL,
            session_ref=case_ref(escalation.id),
            account_number=account_number,
            operator=operator,
            escalation=escalation.id,
            **detail,
        )


__all__ = [
    "DESK_TIMEZONE",
    "MAX_SENDS_PER_CASE",
    "DeskRefused",
    "DeskStats",
    "OperatorDesk",
    "Refusal",
    "Sent",
    "case_ref",
    "mask_phone_last4",
]
