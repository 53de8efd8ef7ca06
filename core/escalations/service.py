"""Operator cases in one API: voice, SMS and the desk open and move cases only through here.

A case is opened in exactly one place (`CaseService._open`); a transfer's fate (answered, no
answer, hung up, left for a callback) is recorded and counted here, whichever webhook saw it.
The repository (`core/escalations/repository.py`) only stores; the channels only say who is asking.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.escalations.repository import ContextValue, Escalations, Outcome
from core.models import (
    Escalation,
    EscalationKind,
    EscalationReason,
    EscalationStatus,
    Verification,
)
from core.platform.crypto import Keyring
from core.platform.metrics import TRANSFER_OUTCOMES
from core.platform.settings import OperatorRoute

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Resident:
    """Who a case is about, as the channel knows them (never a secret).

    `phone` is the number to call back as Twilio gave it; `session_ref` the CallSid or the SMS.
    """

    channel: str
    session_ref: str
    phone: str
    account_number: str | None = None
    purpose: str | None = None
    verification: Verification = Verification.none
    attempts: int = 0


class CaseService:
    """Opens and moves operator cases inside the caller's transaction."""

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self.repository = Escalations(session, keyring)

    async def _open(
        self,
        kind: EscalationKind,
        resident: Resident,
        reason: EscalationReason,
        route: OperatorRoute | None,
        **context: ContextValue,
    ) -> Escalation:
        """The one place a case is constructed."""
        return await self.repository.open(
            kind=kind,
            channel=resident.channel,
            session_ref=resident.session_ref,
            phone=resident.phone,
            reason=reason,
            route=route,
            account_number=resident.account_number,
            purpose=resident.purpose,
            verification=resident.verification,
            attempts=resident.attempts,
            **context,
        )

    async def transfer(
        self,
        resident: Resident,
        reason: EscalationReason,
        *,
        route: OperatorRoute,
        case_id: int | None,
        **context: ContextValue,
    ) -> Escalation:
        """A live transfer; one case per call: a second transfer reopens the call's case."""
        existing = await self.repository.get(case_id) if case_id else None
        if existing is not None:
            return await self.repository.retransfer(
                existing, reason=reason, attempts=resident.attempts, route=route, **context
            )
        return await self._open(
            EscalationKind.transfer, resident, reason, route, transfers=1, **context
        )

    async def callback(
        self,
        resident: Resident,
        reason: EscalationReason,
        *,
        route: OperatorRoute | None = None,
        case_id: int | None = None,
        history: Mapping[str, ContextValue] | None = None,
        **context: ContextValue,
    ) -> Escalation:
        """The resident asked to be called back: the call's case turns into one, or a new one.

        `history` (what happened in the call) goes into a new case only: the call's own case
        has it already.
        """
        existing = await self.repository.get(case_id) if case_id else None
        if existing is not None:
            self._count(existing, "callback")
            return await self.repository.to_callback(existing, **context)
        return await self._open(
            EscalationKind.callback, resident, reason, route, **context, **(history or {})
        )

    async def callback_by_sms(
        self, sender: str, resident: Callable[[], Awaitable[Resident]], **context: ContextValue
    ) -> Escalation | None:
        """An SMS asking for a call; None when one from this number is still waiting."""
        if await self.repository.find_waiting_callback(sender, "sms") is not None:
            return None
        return await self._open(
            EscalationKind.callback,
            await resident(),
            EscalationReason.caller_request,
            None,
            **context,
        )

    async def left_queue(
        self,
        call_sid: str,
        resident: Callable[[], Awaitable[tuple[Resident, EscalationReason]]],
    ) -> None:
        """`*` while waiting in the queue: the transfer becomes a callback request, once.

        A caller queued by the stateless apology has no case: `resident` says who they are.
        """
        case = await self.repository.find_open(call_sid)
        if case is not None and case.kind is EscalationKind.transfer:
            self._count(case, "callback")
            await self.repository.to_callback(case, left_queue=True)
        elif case is None:
            who, reason = await resident()
            await self._open(EscalationKind.callback, who, reason, None, left_queue=True)

    async def answered(self, call_sid: str) -> bool:
        """An operator took the call's transfer; False when the call has no open case."""
        case = await self.repository.find_open(call_sid)
        if case is None:
            return False
        if case.outcome != Outcome.answered:
            self._count(case, "answered")
        await self.repository.answered(case)
        return True

    async def unanswered(self, call_sid: str) -> bool:
        """Nobody answered the call's transfer (or the queue failed)."""
        case = await self.repository.find_open(call_sid)
        if case is None:
            return False
        if case.outcome is None:
            self._count(case, "no_answer")
        await self.repository.unanswered(case)
        return True

    async def abandoned(self, call_sid: str) -> bool:
        """The call ended (or the caller hung up in the queue) before an operator took it."""
        case = await self.repository.find_open(call_sid)
        if case is None:
            return False
        if case.kind is EscalationKind.transfer and case.status is EscalationStatus.waiting:
            self._count(case, "hung_up")
        await self.repository.abandoned(case)
        return True

    async def queued_transfers(self) -> tuple[int, Escalation | None]:
        """How many enqueued calls wait, and the first of them (for the operators' desk)."""
        return await self.repository.queued_transfers()

    @staticmethod
    def _count(case: Escalation, outcome: str) -> None:
        route = case.route or OperatorRoute.dial
        TRANSFER_OUTCOMES.labels(route=route.value, outcome=outcome).inc()


CaseChange = Callable[[CaseService], Awaitable[object]]


async def in_own_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], keyring: Keyring, change: CaseChange
) -> None:
    """Apply `change` in a transaction of its own (the webhooks around a transfer).

    A database failure is logged, never raised: the caller (or the operator) still gets their
    TwiML.
    """
    try:
        async with sessionmaker() as session, session.begin():
            await change(CaseService(session, keyring))
    except Exception as exc:
        log.warning("ivr.case_update_failed", error=type(exc).__name__)
