"""The escalations store: cases of a call, their outcomes, callbacks and the queue's head."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from core.escalations.repository import Escalations, Outcome
from core.models import Escalation, EscalationKind, EscalationReason, EscalationStatus
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker
from core.platform.migrate import upgrade_database
from core.platform.settings import OperatorRoute, Settings

CALL = "CA" + "a" * 32
OTHER = "CA" + "b" * 32
PHONE = "+79123456789"


@pytest.fixture
async def session(settings: Settings) -> AsyncIterator[AsyncSession]:
    await upgrade_database(settings.database_url)
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session, session.begin():
        yield session
    await engine.dispose()


@pytest.fixture
def cases(session: AsyncSession, settings: Settings) -> Escalations:
    return Escalations(session, Keyring(settings))


async def transfer(cases: Escalations, call: str = CALL, state: str = "main_menu") -> Escalation:
    return await cases.open(
        kind=EscalationKind.transfer,
        channel="voice",
        session_ref=call,
        phone=PHONE,
        reason=EscalationReason.caller_request,
        account_number="1000000001",
        route=OperatorRoute.enqueue,
        transfers=1,
        state=state,
    )


async def test_open_masks_the_account_and_keeps_the_context(cases: Escalations) -> None:
    case = await transfer(cases)
    assert case.status is EscalationStatus.waiting and case.outcome is None
    assert case.account_masked == "*******001"
    assert case.account_ref and "1000000001" not in case.account_ref
    assert cases.context(case) == {"state": "main_menu", "transfers": 1}
    assert case.route is OperatorRoute.enqueue
    assert "1000000001" not in repr(case)


async def test_find_open_is_the_newest_open_case_of_the_call(cases: Escalations) -> None:
    assert await cases.find_open(CALL) is None
    assert await cases.find_open("") is None
    first = await transfer(cases)
    await transfer(cases, OTHER)
    assert await cases.find_open(CALL) is first
    assert await cases.find_open(CALL, channel="sms") is None
    await cases.abandoned(first)
    assert await cases.find_open(CALL) is None


async def test_outcomes(cases: Escalations) -> None:
    case = await transfer(cases)
    await cases.unanswered(case)
    assert (case.status, case.outcome) == (EscalationStatus.waiting, Outcome.no_answer)
    await cases.answered(case)
    assert (case.status, case.outcome) == (EscalationStatus.in_progress, Outcome.answered)
    assert case.taken_at is not None
    taken = case.taken_at
    await cases.answered(case)  # a second signal (whisper, then the dial result) changes nothing
    assert case.taken_at == taken
    await cases.abandoned(case)  # a case an operator took is not abandoned
    await cases.unanswered(case)
    assert (case.status, case.outcome) == (EscalationStatus.in_progress, Outcome.answered)


async def test_abandoned_keeps_the_no_answer_outcome(cases: Escalations) -> None:
    case = await transfer(cases)
    await cases.unanswered(case)
    await cases.abandoned(case)
    assert (case.status, case.outcome) == (EscalationStatus.abandoned, Outcome.no_answer)
    assert case.closed_at is not None


async def test_callbacks(cases: Escalations) -> None:
    case = await transfer(cases)
    await cases.unanswered(case)
    await cases.to_callback(case, left_queue=True)
    assert case.kind is EscalationKind.callback
    assert (case.status, case.outcome) == (EscalationStatus.waiting, Outcome.callback_requested)
    assert cases.context(case)["left_queue"] is True
    await cases.abandoned(case)  # the caller hanging up leaves a callback request waiting
    assert case.status is EscalationStatus.waiting
    assert await cases.find_waiting_callback(PHONE, "voice") is case
    assert await cases.find_waiting_callback(PHONE, "sms") is None


async def test_retransfer_reopens_the_case(cases: Escalations) -> None:
    case = await transfer(cases)
    await cases.unanswered(case)
    await cases.retransfer(
        case,
        reason=EscalationReason.retries_exhausted,
        attempts=4,
        route=OperatorRoute.enqueue,
        state="callback_offer",
    )
    assert (case.status, case.outcome, case.reason) == (
        EscalationStatus.waiting,
        None,
        "retries_exhausted",
    )
    assert cases.context(case)["transfers"] == 2
    assert cases.context(case)["state"] == "callback_offer"


async def test_queued_transfers_head_is_the_oldest_waiting(cases: Escalations) -> None:
    assert await cases.queued_transfers() == (0, None)
    first = await transfer(cases)
    second = await transfer(cases, OTHER)
    await cases.open(
        kind=EscalationKind.transfer,
        channel="voice",
        session_ref="CA" + "c" * 32,
        phone=PHONE,
        reason=EscalationReason.error,
        route=OperatorRoute.dial,
    )
    assert await cases.queued_transfers() == (2, first)
    await cases.answered(first)
    assert await cases.queued_transfers() == (1, second)
