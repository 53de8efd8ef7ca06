"""Transfers to an operator through the real app (route: Dial): one stored case per transfer with
its context, the transfer's outcome (answered, no answer → callback offer, caller hung up),
replays, and working hours (closed, holiday) on the call."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urljoin

import pytest
from redis.asyncio import Redis

from core.kit.phones import mask_account
from core.models import CALLER_ID_CHARS
from core.platform.settings import Settings
from core.recovery.service import RecoveryService
from ivr.flow import VoiceFlow
from ivr.menu import State
from tests.conftest import LANDLINE, LANDLINE_ONLY, MOBILE, MOBILE_ONLY, Gateway
from tests.ivr.conftest import (
    CLOSED_NOW,
    MOSCOW,
    OPEN_NOW,
    WORKING_HOURS,
    Case,
    set_clock,
    stored_cases,
)
from tests.ivr.test_webhooks import (
    DRIVERS,
    action_of,
    answer_at,
    at_account_confirm,
    at_account_entry,
    at_code_entry,
    at_main_menu,
    at_method_choice,
    fetch_whisper,
    form,
    last_code,
    other_code,
    ru,
    says,
)
from tests.support.twilio_driver import Call


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """Working hours configured; a test may change more with indirect parametrization."""
    overrides: Mapping[str, object] = getattr(request, "param", {})
    return settings.model_copy(update={"operator_hours": WORKING_HOURS, **overrides})


@pytest.fixture(autouse=True)
def desk_open(gateway: Gateway) -> None:
    """Unless a test says otherwise, it is a working day at noon in Moscow."""
    set_clock(gateway, OPEN_NOW)


def dial_action(call: Call) -> str:
    dial = call.twiml.find("Dial")
    assert dial is not None, call.verbs()
    action = dial.get("action")
    assert action and "/ivr/dial-result" in action
    return urljoin(call.path, action)


async def dial_result(call: Call, action: str, status: str) -> ET.Element:
    """Twilio's request to the Dial action; the call's document becomes its answer."""
    response = await call.twilio.post(action, form(call, DialCallStatus=status))
    assert response.status_code == 200, response.text
    call.twiml = ET.fromstring(response.text)
    call.path = action
    return call.twiml


async def call_status(gateway: Gateway, call: Call, status: str) -> None:
    response = await gateway.twilio.post("/ivr/status", form(call, CallStatus=status))
    assert response.status_code == 204


async def one_case(gateway: Gateway) -> Case:
    cases = await stored_cases(gateway.settings)
    assert len(cases) == 1, cases
    return cases[0]


def assert_transfer_twiml(call: Call, gateway: Gateway) -> None:
    """A well-formed transfer: the sentence, then <Dial><Number url=whisper> with an action."""
    assert call.verbs()[-1] == "Dial", call.verbs()
    number = call.twiml.find("Dial/Number")
    assert number is not None and number.text == gateway.settings.operator_number
    assert (number.get("url") or "").startswith(f"/ivr/whisper?c={call.call_sid}")
    dial_action(call)


# -- one case per transfer, with its context ------------------------------------------------

ACCOUNT_KNOWN = {
    State.main_menu: False,
    State.account_entry: False,
    State.account_confirm: True,
    State.method_choice: True,
    State.code_entry: True,
    State.secret_ready: True,
    State.verify_greeting: True,
    State.verify_code: True,
}
CODE_SENT = {State.code_entry, State.verify_code}
VERIFICATION_CALL = {State.verify_greeting, State.verify_code}


@pytest.mark.parametrize("state", list(DRIVERS))
async def test_zero_in_every_menu_stores_one_waiting_transfer(
    gateway: Gateway, state: State
) -> None:
    call = await DRIVERS[state](gateway)
    if state is State.code_entry:
        # The code's digits are the code's: `*` opens the options, `0` among them (§3).
        await call.press("*")
    await call.press("0")
    assert ru("voice.operator_transfer") in call.text
    assert_transfer_twiml(call, gateway)
    case = await one_case(gateway)
    assert (case.kind, case.status, case.channel) == ("transfer", "waiting", "voice")
    assert case.session_ref == call.call_sid
    assert case.reason == "caller_request"
    # The resident's number: the caller, or the phone on file the verification call reached.
    assert case.phone == (LANDLINE if state in VERIFICATION_CALL else MOBILE)
    came_from = State.code_options if state is State.code_entry else state
    assert case.context["state"] == came_from.value
    assert case.route == "dial" and case.context["transfers"] == 1
    assert "route" not in case.context
    assert case.context["language"] == "ru"
    if ACCOUNT_KNOWN[state]:
        account = LANDLINE_ONLY if state in VERIFICATION_CALL else MOBILE_ONLY
        assert case.account_masked == mask_account(account)  # only the tail is readable
        assert case.account_ref and account not in case.account_ref
        assert case.purpose == "password"
    else:
        assert case.account_masked is None and case.account_ref is None
    expected = {State.secret_ready: "verified", **dict.fromkeys(CODE_SENT, "code_sent")}
    assert case.verification == expected.get(state, "none")


async def test_case_context_holds_no_secrets(gateway: Gateway) -> None:
    call = await at_code_entry(gateway)
    code = last_code(gateway)
    await call.press(other_code(code))
    await call.press("*")
    await call.press("0")
    case = await one_case(gateway)
    dumped = repr(case)
    for secret in (code, MOBILE_ONLY):
        assert secret not in dumped
    assert case.account_masked == mask_account(MOBILE_ONLY)
    assert case.attempts == 1 and case.context["wrong_codes"] == 1


async def test_exhausted_retries_store_the_reason_and_attempts(gateway: Gateway) -> None:
    call = await at_account_entry(gateway)
    for _ in range(gateway.settings.menu_max_tries):
        await call.press("12#")
    assert ru("voice.too_many_tries") in call.text
    assert_transfer_twiml(call, gateway)
    case = await one_case(gateway)
    assert case.reason == "retries_exhausted"
    assert case.attempts == gateway.settings.menu_max_tries
    assert case.context["failed_inputs"] == gateway.settings.menu_max_tries
    assert case.context["state"] == "account_entry"


async def test_three_wrong_codes_store_a_verification_in_progress(gateway: Gateway) -> None:
    call = await at_code_entry(gateway)
    wrong = other_code(last_code(gateway))
    for _ in range(gateway.settings.menu_max_tries):
        await call.press(wrong)
    assert_transfer_twiml(call, gateway)
    case = await one_case(gateway)
    assert case.reason == "retries_exhausted"
    assert case.verification == "code_sent"
    assert case.context["wrong_codes"] == gateway.settings.menu_max_tries
    assert case.account_masked == mask_account(MOBILE_ONLY)


@pytest.mark.parametrize(
    "settings", [{"rate_limit_caller_starts_per_hour": 1}], indirect=True, ids=["starts=1"]
)
async def test_a_tripped_limit_stores_a_limit_case(gateway: Gateway) -> None:
    first = await at_account_confirm(gateway)
    await first.press("1")
    assert ru("voice.method_choice") in first.text
    assert await stored_cases(gateway.settings) == []
    second = await at_account_confirm(gateway)
    await second.press("1")
    assert ru("voice.limit_reached") in second.text
    assert_transfer_twiml(second, gateway)
    case = await one_case(gateway)
    assert case.reason == "limit" and case.session_ref == second.call_sid
    assert case.context["state"] == "account_confirm"


async def test_a_lost_attempt_is_an_error_case(gateway: Gateway, redis: Redis) -> None:
    call = await at_account_confirm(gateway)
    await call.press("1")
    await redis.delete(*await redis.keys("attempt:*"))
    await call.press("1")
    assert ru("voice.error_apology") in call.text
    assert_transfer_twiml(call, gateway)
    assert (await one_case(gateway)).reason == "error"


async def test_replayed_transfer_webhook_stores_no_second_case(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    path = action_of(call)
    first = await answer_at(call, path, Digits="0")
    for answer in ("0", "0", "1"):
        again = await answer_at(call, path, Digits=answer)
        assert says(again.text) == says(first.text)
    assert len(await stored_cases(gateway.settings)) == 1


async def test_the_transfer_whisper_marks_the_case_taken(gateway: Gateway) -> None:
    call = await at_account_confirm(gateway)
    await call.press("0")
    whisper = await fetch_whisper(gateway, call)
    assert ru("whisper.reason_caller_request") in whisper
    case = await one_case(gateway)
    assert (case.status, case.outcome, case.taken) == ("in_progress", "answered", True)


# -- the transfer's outcome -----------------------------------------------------------------


async def test_answered_transfer_is_in_progress(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("0")
    await dial_result(call, dial_action(call), "completed")
    assert call.verbs() == ["Hangup"]
    case = await one_case(gateway)
    assert (case.status, case.outcome) == ("in_progress", "answered")
    # The call then ends: a case an operator took is not abandoned.
    await call_status(gateway, call, "completed")
    assert (await one_case(gateway)).status == "in_progress"


@pytest.mark.parametrize("status", ["no-answer", "busy", "failed"])
async def test_unanswered_transfer_offers_a_callback_and_accepting_stores_it(
    gateway: Gateway, status: str
) -> None:
    call = await at_account_confirm(gateway)
    await call.press("0")
    await dial_result(call, dial_action(call), status)
    assert ru("voice.callback_offer") in call.text
    assert call.gather.get("numDigits") == "1"
    case = await one_case(gateway)
    assert (case.kind, case.status, case.outcome) == ("transfer", "waiting", "no_answer")
    await call.press("1")
    assert ru("voice.callback_accepted") in call.text
    assert call.verbs()[-1] == "Hangup"
    case = await one_case(gateway)
    assert (case.kind, case.status, case.outcome) == ("callback", "waiting", "callback_requested")
    assert case.account_masked == mask_account(MOBILE_ONLY)
    # Hanging up after the confirmation leaves the callback request waiting.
    await call_status(gateway, call, "completed")
    assert (await one_case(gateway)).status == "waiting"


async def test_declining_the_callback_offer_ends_politely_and_abandons(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("0")
    await dial_result(call, dial_action(call), "no-answer")
    await call.silence()
    assert ru("voice.goodbye") in call.text and call.verbs()[-1] == "Hangup"
    await call_status(gateway, call, "completed")
    case = await one_case(gateway)
    assert (case.kind, case.status, case.outcome) == ("transfer", "abandoned", "no_answer")
    assert case.closed


async def test_zero_after_no_answer_transfers_again_in_the_same_case(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("0")
    await dial_result(call, dial_action(call), "busy")
    await call.press("0")
    assert_transfer_twiml(call, gateway)
    case = await one_case(gateway)
    assert (case.status, case.outcome, case.context["transfers"]) == ("waiting", None, 2)


async def test_retried_dial_result_offers_once(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("0")
    action = dial_action(call)
    first = ET.tostring(await dial_result(call, action, "no-answer"), encoding="unicode")
    again = ET.tostring(await dial_result(call, action, "no-answer"), encoding="unicode")
    assert first == again
    await call.press("1")
    assert len(await stored_cases(gateway.settings)) == 1


async def test_caller_hanging_up_while_waiting_abandons(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("0")
    await call_status(gateway, call, "completed")
    case = await one_case(gateway)
    assert (case.status, case.outcome) == ("abandoned", "hung_up")
    assert case.closed


# -- working hours on the call ----------------------------------------------------------------


async def test_outside_hours_no_transfer_the_hours_and_a_callback(gateway: Gateway) -> None:
    set_clock(gateway, CLOSED_NOW)
    call = await at_account_confirm(gateway)
    await call.press("0")
    assert call.twiml.find("Dial") is None and call.twiml.find("Enqueue") is None
    assert "с понедельника по пятницу с восьми до двадцати" in call.text
    assert ru("voice.after_hours", hours="").split(".")[0] in call.text
    assert await stored_cases(gateway.settings) == []
    await call.press("1")
    assert ru("voice.callback_accepted") in call.text and call.verbs()[-1] == "Hangup"
    case = await one_case(gateway)
    assert (case.kind, case.status, case.reason) == ("callback", "waiting", "caller_request")
    assert case.context["after_hours"] is True
    assert case.account_masked == mask_account(MOBILE_ONLY)


async def test_outside_hours_silence_is_a_goodbye_without_a_case(gateway: Gateway) -> None:
    set_clock(gateway, CLOSED_NOW)
    call = await at_main_menu(gateway)
    await call.press("0")
    await call.silence()
    assert ru("voice.goodbye") in call.text and call.verbs()[-1] == "Hangup"
    assert await stored_cases(gateway.settings) == []


async def test_exhausted_retries_outside_hours_keep_their_reason(gateway: Gateway) -> None:
    set_clock(gateway, CLOSED_NOW)
    call = await at_account_entry(gateway)
    for _ in range(gateway.settings.menu_max_tries):
        await call.silence()
    assert ru("voice.too_many_tries") in call.text
    assert call.twiml.find("Dial") is None
    await call.press("1")
    assert (await one_case(gateway)).reason == "retries_exhausted"


@pytest.mark.parametrize(
    "settings",
    [{"operator_holidays": [OPEN_NOW.date()]}],
    indirect=True,
    ids=["holiday"],
)
async def test_a_configured_holiday_closes_the_desk(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("0")
    assert call.twiml.find("Dial") is None
    assert ru("voice.after_hours", hours="").split(".")[0] in call.text


async def test_official_holidays_close_the_desk(gateway: Gateway) -> None:
    set_clock(gateway, datetime(2026, 11, 4, 12, 0, tzinfo=MOSCOW))  # Unity Day, a Wednesday
    call = await at_main_menu(gateway)
    await call.press("0")
    assert call.twiml.find("Dial") is None


async def test_the_apology_outside_hours_needs_no_state(gateway: Gateway) -> None:
    """An unknown call (no state anywhere) at night: the apology, the hours and a goodbye."""
    set_clock(gateway, CLOSED_NOW)
    call = gateway.call()
    response = await answer_at(call, "/ivr/step?s=0", Digits="1")
    document = ET.fromstring(response.text)
    assert ru("voice.error_apology") in says(response.text)
    assert "с понедельника по пятницу" in says(response.text)
    assert [child.tag for child in document][-1] == "Hangup"
    set_clock(gateway, OPEN_NOW)
    response = await answer_at(call, "/ivr/step?s=0", Digits="1")
    assert ET.fromstring(response.text).find("Dial/Number") is not None


async def test_a_failed_webhook_apologises_by_the_container_clock(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard's apology reads the clock every webhook reads (the container's), never a test
    hook: at night it names the hours, by day it transfers."""

    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the flow failed")

    monkeypatch.setattr(VoiceFlow, "handle", broken)
    set_clock(gateway, CLOSED_NOW)
    call = await at_main_menu(gateway)
    response = await answer_at(call, "/ivr/step?s=0", Digits="1")
    assert ru("voice.error_apology") in says(response.text)
    assert "с понедельника по пятницу" in says(response.text)
    assert ET.fromstring(response.text).find("Dial") is None
    set_clock(gateway, OPEN_NOW)
    call = await at_main_menu(gateway)
    response = await answer_at(call, "/ivr/step?s=0", Digits="1")
    assert ET.fromstring(response.text).find("Dial/Number") is not None


async def outcome_total(gateway: Gateway, outcome: str) -> float:
    response = await gateway.twilio.http.get("/metrics")
    assert response.status_code == 200
    for line in response.text.splitlines():
        if line.startswith("gateway_transfer_outcomes_total{") and (
            f'outcome="{outcome}"' in line and 'route="dial"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_transfer_outcomes_are_counted_once(gateway: Gateway) -> None:
    before = {o: await outcome_total(gateway, o) for o in ("no_answer", "callback", "hung_up")}
    call = await at_main_menu(gateway)
    await call.press("0")
    action = dial_action(call)
    await dial_result(call, action, "no-answer")
    await dial_result(call, action, "no-answer")  # a retried webhook counts once
    await call.press("1")
    await call_status(gateway, call, "completed")
    after = {o: await outcome_total(gateway, o) for o in before}
    assert after["no_answer"] == before["no_answer"] + 1
    assert after["callback"] == before["callback"] + 1
    assert after["hung_up"] == before["hung_up"]


@pytest.mark.parametrize("desk", ["open", "closed"])
async def test_a_crash_transfers_without_a_case_or_says_the_hours(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch, desk: str
) -> None:
    """The guard's apology needs neither the database nor Redis; the crashed step stores nothing."""
    call = await at_method_choice(gateway)

    async def crash(*_: object, **__: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(RecoveryService, "send_sms_code", crash)
    set_clock(gateway, OPEN_NOW if desk == "open" else CLOSED_NOW)
    await call.press("1")
    assert ru("voice.error_apology") in call.text
    if desk == "open":
        assert_transfer_twiml(call, gateway)
    else:
        assert call.twiml.find("Dial") is None and call.verbs()[-1] == "Hangup"
        assert "с понедельника по пятницу с восьми до двадцати" in call.text
    assert await stored_cases(gateway.settings) == []


# -- caller IDs as Twilio gives them ---------------------------------------------------------

SIP_32 = "sip:alice.ivanova@pbx.eirc.ru:56"  # 32 characters, wider than a phone number
CLIENT_ID = "client:resident-desk-0123456789"  # a Twilio Client identity (31 characters)
SIP_64 = "sip:" + "m" * 43 + "@pbx.eirc.example"  # the widest caller ID stored whole
CALLER_IDS = [SIP_32, CLIENT_ID, SIP_64, "client:alice"]


@pytest.mark.parametrize("caller", CALLER_IDS)
async def test_a_caller_id_that_is_not_a_phone_number_still_reaches_the_operator(
    gateway: Gateway, caller: str
) -> None:
    assert len(SIP_32) == 32 and len(SIP_64) == 64
    call = await at_main_menu(gateway, caller)
    await call.press("0")
    assert ru("voice.operator_transfer") in call.text
    assert_transfer_twiml(call, gateway)
    case = await one_case(gateway)
    assert (case.kind, case.status, case.reason) == ("transfer", "waiting", "caller_request")
    assert case.phone == caller


@pytest.mark.parametrize("caller", [SIP_32, CLIENT_ID])
async def test_a_long_caller_id_can_leave_a_callback_after_hours(
    gateway: Gateway, caller: str
) -> None:
    set_clock(gateway, CLOSED_NOW)
    call = await at_main_menu(gateway, caller)
    await call.press("0")
    await call.press("1")
    assert ru("voice.callback_accepted") in call.text
    case = await one_case(gateway)
    assert (case.kind, case.phone) == ("callback", caller)


async def test_an_overlong_caller_id_is_cut_to_the_column_not_refused(gateway: Gateway) -> None:
    garbage = "sip:" + "x" * 300 + "@example.com"
    call = await at_main_menu(gateway, garbage)
    await call.press("0")
    assert ru("voice.operator_transfer") in call.text
    case = await one_case(gateway)
    assert case.phone == garbage[:CALLER_ID_CHARS]
