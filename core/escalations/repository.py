"""Escalations: transfers to an operator and callback requests, with what already happened."""

from __future__ import annotations

import json
from enum import StrEnum

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.kit.phones import mask_account
from core.models import (
    CALLER_ID_CHARS,
    Escalation,
    EscalationKind,
    EscalationReason,
    EscalationStatus,
    Verification,
)
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.settings import OperatorRoute

ContextValue = str | int | bool | None

OPEN_STATUSES = (EscalationStatus.waiting, EscalationStatus.in_progress)


class Outcome(StrEnum):
    """What a transfer came to (the `outcome` column)."""

    answered = "answered"
    no_answer = "no_answer"
    hung_up = "hung_up"
    callback_requested = "callback_requested"


class Escalations:
    """Stores escalations in the caller's transaction."""

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    async def open(
        self,
        *,
        kind: EscalationKind,
        channel: str,
        phone: str,
        reason: EscalationReason,
        route: OperatorRoute | None = None,
        session_ref: str = "",
        account_number: str | None = None,
        purpose: str | None = None,
        verification: Verification = Verification.none,
        attempts: int = 0,
        **context: ContextValue,
    ) -> Escalation:
        """Record a case; `context` must hold no secrets.

        `phone` is the number to call back as Twilio gave it (a `sip:` URI or `client:` identity
        too); anything wider than the column is cut, never refused: the case matters more.
        """
        escalation = Escalation(
            kind=kind,
            channel=channel,
            session_ref=session_ref,
            phone=phone[:CALLER_ID_CHARS],
            reason=reason,
            route=route,
            account_ref=self._keyring.reference(account_number) if account_number else None,
            account_masked=mask_account(account_number) if account_number else None,
            purpose=purpose,
            verification=verification,
            attempts=attempts,
            context=json.dumps(context, ensure_ascii=False, sort_keys=True),
        )
        self._session.add(escalation)
        await self._session.flush()
        return escalation

    async def get(self, escalation_id: int) -> Escalation | None:
        """One case by id."""
        return await self._session.get(Escalation, escalation_id)

    async def find_open(self, session_ref: str, channel: str = "voice") -> Escalation | None:
        """The newest case of a call (or SMS thread) that is still waiting or in progress."""
        if not session_ref:
            return None
        return await self._session.scalar(
            select(Escalation)
            .where(
                Escalation.session_ref == session_ref,
                Escalation.channel == channel,
                Escalation.status.in_(OPEN_STATUSES),
            )
            .order_by(Escalation.id.desc())
            .limit(1)
        )

    async def find_waiting_callback(self, phone: str, channel: str) -> Escalation | None:
        """A callback request from this number that nobody has taken yet."""
        return await self._session.scalar(
            select(Escalation)
            .where(
                Escalation.phone == phone,
                Escalation.channel == channel,
                Escalation.kind == EscalationKind.callback,
                Escalation.status == EscalationStatus.waiting,
            )
            .order_by(Escalation.id.desc())
            .limit(1)
        )

    async def queued_transfers(self) -> tuple[int, Escalation | None]:
        """How many enqueued calls wait, and the first of them (the head of Twilio's FIFO queue).

        A call that leaves the queue (answered, hung up, left for a callback) stops waiting here,
        through the queue's action URL or the call's status callback.
        """
        where = (
            Escalation.kind == EscalationKind.transfer,
            Escalation.channel == "voice",
            Escalation.status == EscalationStatus.waiting,
            Escalation.outcome.is_(None),
            Escalation.route == OperatorRoute.enqueue,
        )
        count = await self._session.scalar(select(func.count(Escalation.id)).where(*where))
        head = await self._session.scalar(
            select(Escalation).where(*where).order_by(Escalation.id).limit(1)
        )
        return int(count or 0), head

    async def retransfer(
        self,
        escalation: Escalation,
        *,
        reason: EscalationReason,
        attempts: int,
        route: OperatorRoute,
        **context: ContextValue,
    ) -> Escalation:
        """The same call transferred again (say, 0 after nobody answered): the case waits again."""
        escalation.kind = EscalationKind.transfer
        escalation.status = EscalationStatus.waiting
        escalation.outcome = None
        escalation.reason = reason
        escalation.route = route
        escalation.attempts = attempts
        transfers = int(self.context(escalation).get("transfers") or 1)
        self.note(escalation, transfers=transfers + 1, **context)
        await self._session.flush()
        return escalation

    async def answered(self, escalation: Escalation) -> None:
        """An operator picked up the transfer."""
        if escalation.status is EscalationStatus.waiting:
            escalation.status = EscalationStatus.in_progress
            escalation.taken_at = utcnow()
        escalation.outcome = Outcome.answered
        await self._session.flush()

    async def unanswered(self, escalation: Escalation) -> None:
        """Nobody answered (or the queue failed): the caller is offered a callback request."""
        if escalation.status is EscalationStatus.waiting:
            escalation.outcome = Outcome.no_answer
            await self._session.flush()

    async def abandoned(self, escalation: Escalation) -> None:
        """The caller hung up before an operator took the transfer."""
        if escalation.kind is EscalationKind.transfer and (
            escalation.status is EscalationStatus.waiting
        ):
            escalation.status = EscalationStatus.abandoned
            escalation.outcome = escalation.outcome or Outcome.hung_up
            escalation.closed_at = utcnow()
            await self._session.flush()

    async def to_callback(self, escalation: Escalation, **context: ContextValue) -> Escalation:
        """The caller asked to be called back instead: the case becomes a waiting callback."""
        escalation.kind = EscalationKind.callback
        escalation.status = EscalationStatus.waiting
        escalation.outcome = Outcome.callback_requested
        escalation.closed_at = None
        self.note(escalation, **context)
        await self._session.flush()
        return escalation

    @staticmethod
    def context(escalation: Escalation) -> dict[str, ContextValue]:
        """The case's context as a dict."""
        try:
            value = json.loads(escalation.context or "{}")
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def note(self, escalation: Escalation, **context: ContextValue) -> None:
        """Add to the case's context (no secrets)."""
        merged = {**self.context(escalation), **context}
        escalation.context = json.dumps(merged, ensure_ascii=False, sort_keys=True)
