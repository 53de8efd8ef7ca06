"""The call's timing rules (DESIGN §3), read from the TwiML the webhooks return.

No secret inside a <Gather>; entries wait long enough; `*` at the code step acts at once; short
re-prompts that never replay the greeting; a silent caller reaches the operator well before 80 s;
after hours and after an apology nobody promises an operator who is not there.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from redis.asyncio import Redis

from core.platform.settings import Settings
from ivr.timing import Estimator, espeak_available
from tests.conftest import LANDLINE, MOBILE, Gateway
from tests.ivr.conftest import CLOSED_NOW, OPEN_NOW, WORKING_HOURS, set_clock
from tests.ivr.test_webhooks import (
    at_account_entry,
    at_code_entry,
    at_main_menu,
    at_method_choice,
    at_secret_ready,
    at_verify_code,
    end_cool_downs,
    last_code,
    ru,
)
from tests.support.twilio_driver import Call


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Working hours configured (noon on a working day unless a test sets the clock)."""
    return settings.model_copy(update={"operator_hours": WORKING_HOURS})


@pytest.fixture(autouse=True)
def desk_open(gateway: Gateway) -> None:
    set_clock(gateway, OPEN_NOW)


# Phrases that promise a person on the line.
OPERATOR_PROMISES = ("поможет оператор", "Соединяю с оператором", "оставайтесь на линии")


def outside_gathers(document: ET.Element) -> str:
    return " ".join("".join(say.itertext()) for say in document.findall("Say"))


def inside_gathers(document: ET.Element) -> str:
    return " ".join("".join(say.itertext()) for say in document.iter("Gather") for say in say)


async def test_the_password_is_said_outside_any_gather(gateway: Gateway) -> None:
    call = await at_secret_ready(gateway)
    assert "Первая группа" in outside_gathers(call.twiml)
    assert "группа" not in inside_gathers(call.twiml)
    assert ru("voice.secret_repeat") in inside_gathers(call.twiml)
    assert call.verbs()[-1] == "Gather"
    # The repeat (`*`) says it again, outside the Gather again.
    await call.press("*")
    assert "Первая группа" in outside_gathers(call.twiml)
    assert "группа" not in inside_gathers(call.twiml)


async def test_the_password_groups_use_breaks_and_a_slower_rate(gateway: Gateway) -> None:
    call = await at_secret_ready(gateway)
    groups = [say for say in call.twiml.findall("Say") if "группа" in "".join(say.itertext())]
    assert groups and "".join(groups[0].itertext()).startswith("Первая группа: ")
    for say in groups:
        prosody = say.find("prosody")
        assert prosody is not None and prosody.get("rate")
        assert prosody.findall("break"), ET.tostring(say, encoding="unicode")


async def test_the_login_is_said_outside_any_gather(gateway: Gateway) -> None:
    login = gateway.call(MOBILE)
    await login.start()
    await login.press("2")
    await login.press("1000000001#")
    await login.press("1")
    await login.press("1")
    await login.press(last_code(gateway))
    assert "латинскими буквами" in outside_gathers(login.twiml)
    assert "как" not in inside_gathers(login.twiml)


async def test_the_spoken_code_is_said_outside_the_gather(gateway: Gateway) -> None:
    callback = await at_verify_code(gateway)
    assert "Ваш код" in outside_gathers(callback.twiml)
    assert "Ваш код" not in inside_gathers(callback.twiml)


@pytest.mark.parametrize("driver", [at_account_entry, at_code_entry])
async def test_account_and_code_entry_wait_at_least_15_seconds(
    gateway: Gateway, driver: object
) -> None:
    call = await driver(gateway)  # type: ignore[operator]
    assert int(call.gather.get("timeout") or 0) >= 15
    # Menus stay brisk.
    menu = await at_main_menu(gateway)
    assert int(menu.gather.get("timeout") or 0) < 15


async def test_star_at_the_code_step_ends_the_entry_at_once(gateway: Gateway) -> None:
    call = await at_code_entry(gateway)
    assert call.gather.get("finishOnKey") == "*"
    assert call.gather.get("numDigits") == "6"
    # Twilio posts a lone finish key as no digits at all; some posts carry it: both open the
    # options, and neither is a wrong code or a failure.
    await call.press("")
    assert ru("voice.code_options") in call.text
    assert ru("voice.no_input") not in call.text
    again = await at_code_entry(gateway, caller=LANDLINE)
    await again.press("*")
    assert ru("voice.code_options") in again.text and ru("voice.code_malformed") not in again.text


async def test_code_options_new_code_call_and_operator(gateway: Gateway, redis: Redis) -> None:
    call = await at_code_entry(gateway)
    await call.press("*")
    await call.press("1")  # within the cool-down: said in seconds, back to the code
    assert "секунд" in call.text and "минут" not in call.text
    assert len(gateway.messenger.to(MOBILE)) == 1
    await end_cool_downs(redis)
    await call.press("*")
    await call.press("1")
    assert ru("voice.code_resent") in call.text
    assert len(gateway.messenger.to(MOBILE)) == 2
    await call.press("*")
    await call.press("2")
    assert call.verbs()[-1] == "Hangup"
    await call.hang_up()  # the code call is placed once the caller has hung up
    assert len(gateway.messenger.to(MOBILE, "call")) == 1
    other = await at_code_entry(gateway, caller=LANDLINE)
    await other.press("*")
    await other.press("0")
    assert other.verbs()[-1] == "Dial"


async def test_silence_at_the_code_step_opens_the_options(gateway: Gateway) -> None:
    """The caller waiting for an SMS is offered a new code or a call, not sent to the operator."""
    call = await at_code_entry(gateway)
    await call.silence()
    assert ru("voice.code_options") in call.text
    assert call.twiml.find("Dial") is None


@pytest.mark.parametrize("answer", ["silence", "7"])
async def test_no_reprompt_repeats_the_greeting(gateway: Gateway, answer: str) -> None:
    call = await at_main_menu(gateway)
    greeting = ru("voice.main_menu")
    for _ in range(gateway.settings.menu_max_tries - 1):
        await (call.silence() if answer == "silence" else call.press(answer))
        assert greeting not in call.text and "Здравствуйте" not in call.text
        assert ru("voice.main_menu_short") in call.text
    for driver in (at_account_entry, at_method_choice, at_code_entry):
        step = await driver(gateway)
        first = step.text
        await step.press("9" if driver is at_method_choice else "12")
        assert first not in step.text and len(step.text) < len(first) + 40


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
async def test_a_silent_caller_reaches_the_operator_within_a_minute(gateway: Gateway) -> None:
    estimator = Estimator()
    call = await at_main_menu(gateway)
    elapsed = estimator.document_seconds(call.twiml) + int(call.gather.get("timeout") or 5)
    while call.twiml.find("Dial") is None:
        await call.silence()
        elapsed += estimator.document_seconds(call.twiml)
        if call.twiml.find("Gather") is not None:
            elapsed += int(call.gather.get("timeout") or 5)
    assert elapsed < 60, elapsed


async def after_hours_texts(gateway: Gateway) -> list[str]:
    """Everything said on the ways to an operator while the desk is closed."""
    texts: list[str] = []
    call = await at_main_menu(gateway)
    await call.press("0")
    texts.append(call.text)
    call = await at_account_entry(gateway)
    for _ in range(gateway.settings.menu_max_tries):
        await call.press("12#")
    texts.append(call.text)
    apology = await gateway.twilio.post(
        "/ivr/step?s=0",
        {"CallSid": "CA" + "9" * 32, "From": MOBILE, "Digits": "1", "AccountSid": "AC" + "0" * 32},
    )
    texts.append(" ".join("".join(s.itertext()) for s in ET.fromstring(apology.text).iter("Say")))
    return texts


async def test_after_hours_and_apologies_promise_no_operator(gateway: Gateway) -> None:
    set_clock(gateway, CLOSED_NOW)
    texts = await after_hours_texts(gateway)
    for text in texts:
        assert "не работают" in text, text
        for promise in OPERATOR_PROMISES:
            assert promise not in text, (promise, text)


async def test_open_desk_transfers_say_so(gateway: Gateway) -> None:
    set_clock(gateway, OPEN_NOW)
    call: Call = await at_main_menu(gateway)
    await call.press("0")
    assert ru("voice.operator_transfer") in call.text and call.verbs()[-1] == "Dial"
