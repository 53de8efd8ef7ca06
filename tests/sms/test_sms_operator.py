"""ОПЕРАТОР by SMS: a callback request stored once, and working hours in the reply (§3, §4)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from core.kit.phones import mask_account
from core.kit.segments import sms_segments
from core.platform.settings import Settings
from tests.conftest import MOBILE, MOBILE_ONLY, SECOND_MOBILE, Gateway
from tests.ivr.conftest import CLOSED_NOW, OPEN_NOW, WORKING_HOURS, set_clock, stored_cases
from tests.support.twilio_driver import Phone
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    overrides: Mapping[str, object] = getattr(request, "param", {})
    return settings.model_copy(update={"operator_hours": WORKING_HOURS, **overrides})


@pytest.fixture
def phone(gateway: Gateway) -> Phone:
    set_clock(gateway, OPEN_NOW)
    return Phone(gateway.twilio, MOBILE)


def reply(key: str, language: Language = Language.ru) -> str:
    return PROMPTS.text(key, language)


async def test_inside_hours_a_callback_request_is_stored(gateway: Gateway, phone: Phone) -> None:
    sid = "SM" + "1" * 32
    assert await phone.text("ОПЕРАТОР", sid=sid) == [reply("sms.reply_callback")]
    [case] = await stored_cases(gateway.settings)
    assert (case.kind, case.status, case.channel) == ("callback", "waiting", "sms")
    assert (case.phone, case.session_ref, case.reason) == (MOBILE, sid, "caller_request")
    assert case.context["after_hours"] is False
    assert case.account_masked is None and case.verification == "none"


async def test_a_request_in_progress_is_carried_into_the_case(
    gateway: Gateway, phone: Phone
) -> None:
    await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    await phone.text("OPERATOR")
    [case] = await stored_cases(gateway.settings)
    assert case.account_masked == mask_account(MOBILE_ONLY)
    assert (case.verification, case.purpose) == ("code_sent", "password")
    assert case.context["language"] == "en"


async def test_retried_and_repeated_requests_store_one_case(gateway: Gateway, phone: Phone) -> None:
    sid = "SM" + "2" * 32
    first = await phone.text("ОПЕРАТОР", sid=sid)
    assert await phone.text("ОПЕРАТОР", sid=sid) == first  # Twilio's retry
    assert await phone.text("оператор") == first  # the resident asks again
    assert len(await stored_cases(gateway.settings)) == 1
    # Another resident's request is a case of its own.
    await Phone(gateway.twilio, SECOND_MOBILE).text("ОПЕРАТОР")
    assert len(await stored_cases(gateway.settings)) == 2


@pytest.mark.parametrize("language", list(Language))
async def test_outside_hours_the_reply_gives_the_hours(
    gateway: Gateway, phone: Phone, language: Language
) -> None:
    set_clock(gateway, CLOSED_NOW)
    word = "ОПЕРАТОР" if language is Language.ru else "OPERATOR"
    [text] = await phone.text(word)
    assert text.startswith(reply("sms.reply_callback_closed", language))
    hours = (
        "пн–пт 8:00–20:00, сб 10:00–16:00"
        if language is Language.ru
        else ("Mon-Fri 8:00-20:00; Sat 10:00-16:00")
    )
    assert text.endswith(hours)
    # A reply goes to whoever texts: one segment, the hours included (issue 13).
    assert sms_segments(text) == 1
    [case] = await stored_cases(gateway.settings)
    assert (case.kind, case.status) == ("callback", "waiting")
    assert case.context["after_hours"] is True


@pytest.mark.parametrize(
    "settings", [{"operator_holidays": [OPEN_NOW.date()]}], indirect=True, ids=["holiday"]
)
async def test_on_a_holiday_the_reply_gives_the_hours(gateway: Gateway, phone: Phone) -> None:
    [text] = await phone.text("ОПЕРАТОР")
    assert text.startswith(reply("sms.reply_callback_closed"))


@pytest.mark.parametrize("settings", [{"operator_hours": ""}], indirect=True, ids=["always"])
async def test_without_a_schedule_the_desk_is_always_open(gateway: Gateway, phone: Phone) -> None:
    set_clock(gateway, CLOSED_NOW)
    assert await phone.text("ОПЕРАТОР") == [reply("sms.reply_callback")]
