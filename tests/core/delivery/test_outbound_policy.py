"""Where outbound messages may go (§6.14, §4 opt-outs) and how their status moves (forward only)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from sqlalchemy import event, select

from core.delivery.optouts import OptOuts
from core.delivery.outbox import Delivery, record_status
from core.models import OutboxMessage
from core.platform.db import transaction
from core.platform.settings import Settings
from tests.conftest import LANDLINE, MOBILE
from tests.core.delivery.test_dispatch import Env, ScriptedMessenger, make_env

PREMIUM = "+78095551234"
SATELLITE = "+881612345678"


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    environment = await make_env(settings)
    yield environment
    await environment.engine.dispose()


async def outbox(env: Env) -> list[tuple[str, str, str]]:
    """(to, purpose, status) of every row, oldest first."""
    async with env.sessionmaker() as session:
        rows = (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
    return [(row.to_number, row.purpose, row.status) for row in rows]


@pytest.mark.parametrize(
    "number",
    [PREMIUM, "+78035551234", "+78085551234", "+78004445566", SATELLITE, "+447400123456"],
    ids=["premium-809", "premium-803", "personal-808", "freephone-800", "satellite", "abroad"],
)
async def test_no_code_sms_or_call_to_premium_or_non_geographic_numbers(
    env: Env, number: str
) -> None:
    async with transaction(env.sessionmaker) as session:
        delivery = Delivery(env.settings, session, env.keyring, lambda: None)
        assert delivery.allowed(number) is False
        assert await delivery.sms(number, "ЕИРЦ: код 123456", "code", attempt_ref="a") is False
        assert (
            await delivery.call(number, "https://gw.example/ivr/verify?a=a", "code_call") is False
        )
        # Ordinary lines still get them.
        assert await delivery.sms(MOBILE, "ЕИРЦ: код 123456", "code", attempt_ref="a") is True
        assert await delivery.call(LANDLINE, "https://gw.example/ivr/verify?a=a", "code_call")
    # A refusal does a send's work (a withheld row), so timing does not tell (§6.2).
    assert await outbox(env) == [
        ("", "code", "withheld"),
        ("", "code_call", "withheld"),
        (MOBILE, "code", "queued"),
        (LANDLINE, "code_call", "queued"),
    ]


async def test_a_stop_silences_everything_but_its_confirmation_and_recovery_notices(
    env: Env,
) -> None:
    """§4: a spoofed STOP must not silence the notice that someone recovered the account."""
    async with transaction(env.sessionmaker) as session:
        await OptOuts(session).opt_out(MOBILE)
        delivery = Delivery(env.settings, session, env.keyring, lambda: None)
        for purpose in ("code", "password", "login"):
            assert await delivery.sms(MOBILE, "ЕИРЦ", purpose) is False, purpose
        assert await delivery.sms(MOBILE, "ЕИРЦ: доступ восстановлен", "notice") is True
    assert [(to, purpose) for to, purpose, status in await outbox(env) if status == "queued"] == [
        (MOBILE, "notice")
    ]


async def test_an_opt_out_is_read_once_and_again_after_its_own_change(env: Env) -> None:
    """The password SMS's two questions (may it go, then queue it) are one query; a STOP or
    START through the same object is read back, never a kept answer."""
    queries: list[str] = []
    async with transaction(env.sessionmaker) as session:
        opt_outs = OptOuts(session)
        event.listen(session.sync_session.get_bind(), "before_cursor_execute", queries_of(queries))
        assert await opt_outs.is_opted_out(MOBILE) is False
        assert await opt_outs.is_opted_out(MOBILE) is False
        assert len(opted_out_reads(queries)) == 1
        assert await opt_outs.opt_out(MOBILE) is True
        assert await opt_outs.is_opted_out(MOBILE) is True
        assert await opt_outs.opt_in(MOBILE) is True
        assert await opt_outs.is_opted_out(MOBILE) is False
        assert len(opted_out_reads(queries)) == 3  # the first, and one after each change


def queries_of(queries: list[str]) -> Callable[..., None]:
    def record(_connection: object, _cursor: object, statement: str, *_: object) -> None:
        queries.append(statement)

    return record


def opted_out_reads(queries: list[str]) -> list[str]:
    return [query for query in queries if query.startswith("SELECT sms_opt_outs")]


async def status_after(env: Env, row_id: int, *reports: str) -> str:
    row = await env.row(row_id)
    for report in reports:
        async with transaction(env.sessionmaker) as session:
            await record_status(session, row.provider_sid or "", report, None)
    return (await env.row(row_id)).status


@pytest.mark.parametrize(
    ("reports", "final"),
    [
        (("delivered", "sent"), "delivered"),
        (("delivered", "queued"), "delivered"),
        (("read", "delivered", "sent"), "read"),
        (("undelivered", "sent"), "undelivered"),
        (("delivered", "undelivered"), "delivered"),
        (("undelivered", "delivered"), "delivered"),
        (("failed", "undelivered"), "failed"),
        (("sent", "delivered"), "delivered"),
        (("sending", "sent", "delivered", "read"), "read"),
    ],
    ids=lambda value: "-".join(value) if isinstance(value, tuple) else value,
)
async def test_a_late_status_callback_never_moves_a_message_back(
    env: Env, reports: tuple[str, ...], final: str
) -> None:
    row_id = await env.queue("notice")
    await env.dispatcher(ScriptedMessenger()).drain()
    assert await status_after(env, row_id, *reports) == final


@pytest.mark.parametrize(
    ("reports", "final"),
    [
        (("completed", "ringing"), "completed"),
        (("in-progress", "initiated"), "in-progress"),
        (("no-answer", "ringing"), "no-answer"),
    ],
    ids=["completed-ringing", "in-progress-initiated", "no-answer-ringing"],
)
async def test_a_late_call_status_never_moves_a_call_back(
    env: Env, reports: tuple[str, ...], final: str
) -> None:
    row_id = await env.queue("code_call", to=LANDLINE, channel="call")
    await env.dispatcher(ScriptedMessenger()).drain()
    assert await status_after(env, row_id, *reports) == final


async def test_the_dispatcher_keeps_a_state_a_callback_recorded_first(env: Env) -> None:
    """The callback can beat the create request's answer here: "delivered" stands."""
    row_id = await env.queue("notice")
    messenger = ScriptedMessenger()
    dispatcher = env.dispatcher(messenger)

    original = messenger._send

    async def delivered_before_the_answer(channel: str, to: str) -> str:
        sid = await original(channel, to)
        row = await env.row(row_id)
        async with transaction(env.sessionmaker) as session:
            await record_status(session, sid, "delivered", None, outbox_key=row.idempotency_key)
        return sid

    messenger._send = delivered_before_the_answer  # type: ignore[method-assign]
    await dispatcher.drain()
    row = await env.row(row_id)
    assert row.status == "delivered" and row.provider_sid == "SM" + "1".zfill(32)
