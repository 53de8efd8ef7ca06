"""The code by a voice call: placed after the caller hung up, from the hotline's number, once,
and placed again when nobody answered (§3; core/recovery/code_calls.py, ivr/verification_call.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import timedelta

import pytest
from sqlalchemy import select

from core.delivery.dispatcher import Dispatcher
from core.models import OutboxMessage
from core.platform.clock import utcnow
from core.platform.container import Services
from core.platform.db import create_engine, create_sessionmaker
from core.platform.settings import Settings
from ivr.screens import spoken_number
from tests.conftest import LANDLINE, LANDLINE_ONLY, MOBILE, MOBILE_ONLY, Gateway
from tests.ivr.test_voice_recovery import reach_method_choice
from tests.support.twilio_driver import Call
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    overrides: Mapping[str, object] = getattr(request, "param", {})
    return settings.model_copy(update=dict(overrides))


def services(gateway: Gateway) -> Services:
    found: Services = gateway.app.state.services
    return found


async def code_call_rows(gateway: Gateway) -> list[OutboxMessage]:
    engine = create_engine(gateway.settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            query = select(OutboxMessage).where(OutboxMessage.purpose == "code_call")
            return list((await session.scalars(query.order_by(OutboxMessage.id))).all())
    finally:
        await engine.dispose()


async def ask_for_the_call(gateway: Gateway, account: str = LANDLINE_ONLY) -> Call:
    call = gateway.call(caller="+79990001122")
    await reach_method_choice(call, account)
    await call.press("2")
    return call


def a_dispatcher_at(gateway: Gateway, seconds_ahead: float) -> Dispatcher:
    """The gateway's dispatcher as it would run `seconds_ahead` from now (the sweeper's view)."""
    found = services(gateway)
    later = utcnow() + timedelta(seconds=seconds_ahead)

    async def no_hook(*_: object) -> None:
        return None

    return Dispatcher(
        found.sessionmaker,
        gateway.messenger,
        found.keyring,
        no_hook,
        found.dispatcher.policy,
        clock=lambda: later,
    )


async def test_the_call_is_placed_only_after_the_caller_hung_up(gateway: Gateway) -> None:
    call = await ask_for_the_call(gateway)
    # The caller hears the number the call will come from, and to hang up.
    number = spoken_number(gateway.settings.hotline_number, PROMPTS, Language.ru)
    assert PROMPTS.text("voice.call_arranged", Language.ru, number=number) in call.text
    assert "8, 800, 555" in call.text and "Положите, пожалуйста, трубку" in call.text
    assert call.verbs()[-1] == "Hangup"
    # Not while the caller still listens, nor on a status that is not the end of the call.
    assert gateway.messenger.to(LANDLINE, "call") == []
    assert await call.hang_up("in-progress") == 204
    assert gateway.messenger.to(LANDLINE, "call") == []
    [held] = await code_call_rows(gateway)
    assert held.status == "queued" and held.next_attempt_at is not None

    assert await call.hang_up() == 204
    [placed] = gateway.messenger.to(LANDLINE, "call")
    assert placed.purpose == "code_call" and "/ivr/verify?a=" in placed.url
    [row] = await code_call_rows(gateway)
    # From the hotline's number, the one the caller was told.
    assert (row.status, row.from_number) == ("sent", gateway.settings.hotline_number)
    # A retried callback places nothing more.
    assert await call.hang_up() == 204
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1


@pytest.mark.parametrize(
    "settings", [{"verification_call_wait_seconds": 1}], indirect=True, ids=["wait-1s"]
)
async def test_without_a_callback_the_fallback_timer_places_the_call(gateway: Gateway) -> None:
    """No status callback comes (the number's webhook is not configured): the app's sweeper
    places the held call by itself once its time comes, with no other request to wake it."""
    await ask_for_the_call(gateway)
    assert gateway.messenger.to(LANDLINE, "call") == []
    for _ in range(200):  # the sweeper naps until the row is due; give it ample time
        if gateway.messenger.to(LANDLINE, "call"):
            break
        await asyncio.sleep(0.05)
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1
    [row] = await code_call_rows(gateway)
    assert row.status == "sent" and row.attempts == 1


async def test_the_held_call_waits_about_twenty_seconds_by_default(gateway: Gateway) -> None:
    await ask_for_the_call(gateway)
    [row] = await code_call_rows(gateway)
    assert row.next_attempt_at is not None
    held = (row.next_attempt_at - row.created_at).total_seconds()
    assert gateway.settings.verification_call_wait_seconds == 20
    assert 19 <= held <= 21
    # Before it is due, a drain places nothing; once due (no callback came), it does.
    assert await a_dispatcher_at(gateway, 5).drain() == 0
    assert gateway.messenger.to(LANDLINE, "call") == []
    assert await a_dispatcher_at(gateway, 21).drain() == 1
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1


async def test_callback_and_timer_together_place_one_call(gateway: Gateway) -> None:
    call = await ask_for_the_call(gateway)
    late = a_dispatcher_at(gateway, 30)  # the fallback timer's sweep, in another process
    # Both fire at once: the status callback (and its drain) and the timer's drain.
    results = await asyncio.gather(call.hang_up(), late.drain(), late.drain())
    assert results[0] == 204
    await services(gateway).dispatcher.drain()
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1
    [row] = await code_call_rows(gateway)
    assert row.attempts == 1


@pytest.mark.parametrize("first", ["timer", "callback"])
async def test_whichever_fires_second_places_nothing(gateway: Gateway, first: str) -> None:
    call = await ask_for_the_call(gateway)
    timer = a_dispatcher_at(gateway, 30)
    if first == "timer":
        assert await timer.drain() == 1
        assert await call.hang_up() == 204  # the callback comes late
    else:
        assert await call.hang_up() == 204
        assert await timer.drain() == 0  # the timer's sweep finds it placed
    await services(gateway).dispatcher.drain()
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1
    [row] = await code_call_rows(gateway)
    assert (row.status, row.attempts) == ("sent", 1)


async def post_code_call_status(gateway: Gateway, row: OutboxMessage, status: str) -> int:
    """The code call's own status callback, with our key in its URL as Twilio would post it."""
    params = {
        "AccountSid": "AC" + "0" * 32,
        "CallSid": row.provider_sid or "",
        "CallStatus": status,
        "Direction": "outbound-api",
        "From": gateway.settings.hotline_number,
        "To": row.to_number,
    }
    path = f"/ivr/status?outbox={row.idempotency_key}"
    return (await gateway.twilio.post(path, params)).status_code


@pytest.mark.parametrize("status", ["busy", "no-answer", "failed"])
async def test_an_unanswered_call_is_placed_again_twice(gateway: Gateway, status: str) -> None:
    call = await ask_for_the_call(gateway)
    await call.hang_up()
    retry = gateway.settings.verification_call_retry_seconds
    for attempt in (1, 2, 3):
        assert len(gateway.messenger.to(LANDLINE, "call")) == attempt
        [row] = await code_call_rows(gateway)
        assert await post_code_call_status(gateway, row, status) == 204
        [row] = await code_call_rows(gateway)
        if attempt == 3:
            break
        # Queued again, a couple of minutes on: not at once, and then once.
        assert (row.status, row.reason) == ("queued", "retrying")
        assert await a_dispatcher_at(gateway, retry / 2).drain() == 0
        assert await a_dispatcher_at(gateway, retry * attempt + 5).drain() == 1
    # Two retries (three calls in about five minutes), then it stays as reported.
    assert len(gateway.messenger.to(LANDLINE, "call")) == 3
    assert row.status == status
    assert await a_dispatcher_at(gateway, retry * 4).drain() == 0


async def test_an_answered_call_is_not_placed_again(gateway: Gateway) -> None:
    call = await ask_for_the_call(gateway, MOBILE_ONLY)
    await call.hang_up()
    [row] = await code_call_rows(gateway)
    assert await post_code_call_status(gateway, row, "completed") == 204
    assert await a_dispatcher_at(gateway, 600).drain() == 0
    assert len(gateway.messenger.to(MOBILE, "call")) == 1


async def test_a_silent_answer_ends_with_the_prompt_written_for_it(gateway: Gateway) -> None:
    """A voicemail box or nobody at the phone: no key, no code, and the goodbye says why."""
    call = await ask_for_the_call(gateway)
    await call.hang_up()
    [placed] = gateway.messenger.to(LANDLINE, "call")
    answered = Call(gateway.twilio, caller=gateway.settings.hotline_number, called=LANDLINE)
    await answered.start(placed.url.removeprefix(gateway.settings.public_base_url))
    for _ in range(gateway.settings.menu_max_tries):
        await answered.silence()
    assert answered.verbs()[-1] == "Hangup"
    assert PROMPTS.text("voice.verify_no_answer", Language.ru) in answered.text
    assert "Ваш код" not in " ".join(answered.history)
