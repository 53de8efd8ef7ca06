"""Routing on the call: <Dial> to a number or a SIP URI, or <Enqueue> with a hold prompt (place and
expected wait, `*` for a callback instead), the queue's results, and the operators' desk."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest

from core.kit.phones import mask_account
from core.models import EscalationReason
from core.platform.crypto import Keyring
from core.platform.settings import OperatorRoute, Settings
from gateway.simulator import PhoneSimulator, ScriptedIO
from ivr.menu import State
from ivr.screens import Screens
from ivr.session import CallSession
from ivr.twiml import Renderer
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, Gateway
from tests.ivr.conftest import OPEN_NOW, Case, set_clock, stored_cases
from tests.ivr.test_desk_signin import DESK_PIN, DeskCall, add_desk_operator
from tests.ivr.test_webhooks import (
    PROMPTS,
    at_account_confirm,
    at_main_menu,
    form,
    ru,
    says,
)
from tests.support.twilio_driver import Call
from voice_prompts import Language, load_catalogue

QUEUE = "eirc-operators"
SIP = "sip:desk@pbx.eirc.example"

# -- rendering, without the app -------------------------------------------------------------


def operator_screen(**overrides: object) -> ET.Element:
    settings = Settings(_env_file=None, **overrides)  # type: ignore[arg-type]
    screens = Screens(settings=settings, keyring=Keyring(settings), prompts=load_catalogue())
    call = CallSession(
        call_sid="CA" + "1" * 32, state=State.operator, reason=EscalationReason.limit
    )
    document = ET.fromstring(Renderer(settings).render(screens.screen(call)))
    assert document.tag == "Response"
    return document


def test_dial_to_a_number() -> None:
    document = operator_screen(operator_number="+74950000001", operator_dial_timeout_seconds=25)
    dial = document.find("Dial")
    assert dial is not None and dial.get("timeout") == "25"
    number = document.find("Dial/Number")
    assert number is not None and number.text == "+74950000001"
    assert document.find("Dial/Sip") is None
    assert (number.get("url") or "").startswith("/ivr/whisper?c=CA")
    assert "r=limit" in (number.get("url") or "")


def test_dial_to_a_sip_uri() -> None:
    document = operator_screen(operator_number=SIP)
    sip = document.find("Dial/Sip")
    assert sip is not None and sip.text == SIP
    assert document.find("Dial/Number") is None
    assert (sip.get("url") or "").startswith("/ivr/whisper?c=CA")
    assert sip.get("method") == "POST"


def test_enqueue_into_the_named_queue() -> None:
    document = operator_screen(operator_route=OperatorRoute.enqueue, operator_queue="desk-1")
    assert [child.tag for child in document] == ["Say", "Enqueue"]
    enqueue = document.find("Enqueue")
    assert enqueue is not None and enqueue.text == "desk-1"
    assert (enqueue.get("waitUrl") or "").startswith("/ivr/queue-wait?c=CA")
    assert enqueue.get("waitUrlMethod") == "POST"
    assert (enqueue.get("action") or "").startswith("/ivr/queue-result?c=CA")
    assert document.find("Dial") is None


# -- the enqueue route through the app ------------------------------------------------------


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    overrides: Mapping[str, object] = getattr(request, "param", {})
    return settings.model_copy(
        update={"operator_route": OperatorRoute.enqueue, "operator_queue": QUEUE, **overrides}
    )


@pytest.fixture(autouse=True)
def desk_open(gateway: Gateway) -> None:
    set_clock(gateway, OPEN_NOW)


def enqueue_of(call: Call) -> ET.Element:
    enqueue = call.twiml.find("Enqueue")
    assert enqueue is not None, call.verbs()
    assert enqueue.text == QUEUE
    return enqueue


async def post(call: Call, url: str, **params: str) -> ET.Element:
    """A signed request Twilio makes for this call; the call's document becomes the answer."""
    path = urljoin(call.path, url)
    response = await call.twilio.post(path, form(call, **params))
    assert response.status_code == 200, response.text
    call.twiml = ET.fromstring(response.text)
    call.path = path
    return call.twiml


async def enqueued(gateway: Gateway) -> tuple[Call, str, str]:
    """A caller who pressed 0 and waits in the queue: the call, its waitUrl and action."""
    call = await at_account_confirm(gateway)
    await call.press("0")
    assert ru("voice.operator_transfer") in call.text
    enqueue = enqueue_of(call)
    return call, str(enqueue.get("waitUrl")), str(enqueue.get("action"))


async def one_case(gateway: Gateway) -> Case:
    cases = await stored_cases(gateway.settings)
    assert len(cases) == 1, cases
    return cases[0]


async def test_transfer_enqueues_and_stores_one_case(gateway: Gateway) -> None:
    call, _, _ = await enqueued(gateway)
    case = await one_case(gateway)
    assert (case.kind, case.status, case.route) == ("transfer", "waiting", "enqueue")
    assert case.session_ref == call.call_sid


async def test_hold_prompt_gives_the_place_and_the_wait(gateway: Gateway) -> None:
    call, wait_url, _ = await enqueued(gateway)
    await post(call, wait_url, QueuePosition="3", CurrentQueueSize="4", AvgQueueTime="150")
    text = call.text
    assert ru("voice.queue_position", position=3) in text
    assert ru("voice.queue_wait", wait="3 минуты") in text
    assert ru("voice.queue_hold") in text
    gather = call.gather
    assert gather.get("numDigits") == "1" and gather.get("finishOnKey") == ""
    # Silence lets the document end: Twilio requests the waitUrl again (the repeat).
    assert gather.get("actionOnEmptyResult") is None
    assert gather.get("timeout") == str(gateway.settings.operator_queue_repeat_seconds)
    assert "/ivr/queue-wait" in (gather.get("action") or "")
    # The first caller, with no average yet: the place only.
    await post(call, wait_url, QueuePosition="1", CurrentQueueSize="1", AvgQueueTime="0")
    assert ru("voice.queue_position", position=1) in call.text
    assert ru("voice.queue_wait", wait="").split(":")[0] not in call.text


async def test_hold_prompt_in_english(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("9")
    await call.press("0")
    wait_url = str(enqueue_of(call).get("waitUrl"))
    assert parse_qs(urlsplit(wait_url).query)["l"] == ["en"]
    await post(call, wait_url, QueuePosition="2", AvgQueueTime="60")
    assert PROMPTS.text("voice.queue_wait", Language.en, wait="1 minute") in call.text


@pytest.mark.parametrize(
    "params",
    [{}, {"QueuePosition": "abc", "AvgQueueTime": "-5"}, {"QueuePosition": "9" * 40}],
    ids=["missing", "malformed", "huge"],
)
async def test_hold_prompt_survives_odd_queue_parameters(
    gateway: Gateway, params: dict[str, str]
) -> None:
    call, wait_url, _ = await enqueued(gateway)
    await post(call, wait_url, **params)
    assert ru("voice.queue_hold") in call.text


async def test_star_leaves_the_queue_for_a_callback(gateway: Gateway) -> None:
    call, wait_url, action = await enqueued(gateway)
    await post(call, wait_url, QueuePosition="2", AvgQueueTime="90")
    await post(call, str(call.gather.get("action")), Digits="*")
    assert call.verbs() == ["Leave"]
    await post(call, action, QueueResult="leave", QueueTime="40")
    assert ru("voice.callback_accepted") in call.text and call.verbs()[-1] == "Hangup"
    case = await one_case(gateway)
    assert (case.kind, case.status, case.outcome) == ("callback", "waiting", "callback_requested")
    assert case.context["left_queue"] is True
    assert case.account_masked == mask_account(MOBILE_ONLY)
    # Twilio retries the action: no second case, the same answer.
    await post(call, action, QueueResult="leave", QueueTime="40")
    assert ru("voice.callback_accepted") in call.text
    assert len(await stored_cases(gateway.settings)) == 1


async def test_another_key_in_the_queue_repeats_the_hold_prompt(gateway: Gateway) -> None:
    call, wait_url, _ = await enqueued(gateway)
    await post(call, wait_url, QueuePosition="2")
    await post(call, str(call.gather.get("action")), Digits="5")
    assert ru("voice.queue_hold") in call.text and call.twiml.find("Leave") is None


async def test_bridged_caller_is_in_progress(gateway: Gateway) -> None:
    call, _, action = await enqueued(gateway)
    # The operator's call dequeues the caller: the <Queue> url runs on the caller's end.
    connect = await call.twilio.post(
        "/ivr/queue-connect", form(call, QueueSid="QU" + "0" * 32, DequeingCallSid="CA" + "e" * 32)
    )
    assert connect.status_code == 200
    assert ru("voice.queue_connecting") in says(connect.text)
    case = await one_case(gateway)
    assert (case.status, case.outcome, case.taken) == ("in_progress", "answered", True)
    await post(call, action, QueueResult="bridged", QueueTime="30")
    assert call.verbs() == ["Hangup"]
    assert (await one_case(gateway)).status == "in_progress"


async def test_hanging_up_in_the_queue_abandons(gateway: Gateway) -> None:
    call, _, action = await enqueued(gateway)
    await post(call, action, QueueResult="hangup", QueueTime="75")
    case = await one_case(gateway)
    assert (case.status, case.outcome) == ("abandoned", "hung_up")


@pytest.mark.parametrize("result", ["queue-full", "error", "system-error"])
async def test_a_failed_queue_offers_a_callback(gateway: Gateway, result: str) -> None:
    call, _, action = await enqueued(gateway)
    await post(call, action, QueueResult=result)
    assert ru("voice.callback_offer") in call.text
    await call.press("1")
    case = await one_case(gateway)
    assert (case.kind, case.outcome) == ("callback", "callback_requested")


# -- the operators' desk --------------------------------------------------------------------


def desk_form() -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32,
        "CallSid": "CA" + "d" * 32,
        "CallStatus": "in-progress",
        "Direction": "inbound",
        "From": "+74950000001",
        "To": "+78005550102",
    }


@pytest.fixture
async def desk_call(gateway: Gateway) -> DeskCall:
    """A real operator's desk phone, signed in with the operator's PIN (§6.11)."""
    number = await add_desk_operator(gateway.settings)
    call = DeskCall(gateway)
    await call.sign_in(number, DESK_PIN)
    assert ru("whisper.desk_signed_in") in call.text
    return call


async def desk(call: DeskCall) -> ET.Element:
    return await call.dial()


def spoken(document: ET.Element) -> str:
    return " ".join("".join(say.itertext()) for say in document.iter("Say"))


async def test_the_desk_holds_while_nobody_waits(desk_call: DeskCall) -> None:
    document = await desk(desk_call)
    assert [child.tag for child in document] == ["Say", "Pause", "Redirect"]
    assert ru("whisper.desk_empty") in spoken(document)
    assert document.findtext("Redirect") == "/ivr/operator-desk"


async def test_the_desk_summarises_the_first_caller_then_takes_them(
    gateway: Gateway, desk_call: DeskCall
) -> None:
    first, _, _ = await enqueued(gateway)
    second = await at_main_menu(gateway)
    await second.press("0")
    document = await desk(desk_call)
    text = spoken(document)
    assert ru("whisper.desk_waiting", count=2).split(":")[0] in text
    assert PROMPTS.digits(MOBILE_ONLY[-3:], Language.ru) in text  # the first caller's case
    assert ru("whisper.reason_caller_request") in text
    assert PROMPTS.digits(MOBILE_ONLY, Language.ru) not in text
    queue = document.find("Dial/Queue")
    assert queue is not None and queue.text == QUEUE
    assert queue.get("url") == "/ivr/queue-connect"
    dial = document.find("Dial")
    assert dial is not None and dial.get("action") == "/ivr/operator-desk"
    # Once the first caller is taken, the desk speaks of the second.
    await first.twilio.post("/ivr/queue-connect", form(first))
    text = spoken(await desk(desk_call))
    assert ru("whisper.no_account") in text


async def test_the_desk_refuses_unsigned_requests(gateway: Gateway) -> None:
    response = await gateway.twilio.http.post("/ivr/operator-desk", data=desk_form())
    assert response.status_code == 403


# -- the phone simulator in the queue -----------------------------------------------------------


def simulator(gateway: Gateway, io: ScriptedIO) -> PhoneSimulator:
    return PhoneSimulator(
        gateway_url="http://gateway.internal",
        public_base_url=PUBLIC_BASE_URL,
        account_sid="AC" + "0" * 32,
        auth_token=AUTH_TOKEN,
        phone_number=MOBILE,
        service_number=gateway.settings.hotline_number,
        io=io,
        client=gateway.twilio.http,
        auto_answer=False,
    )


async def test_simulator_shows_the_hold_prompt_and_star_leaves(gateway: Gateway) -> None:
    io = ScriptedIO(["0", "*"])
    result = await simulator(gateway, io).call()
    said = " ".join(text for text, _ in io.said)
    assert ru("voice.queue_position", position=1) in said
    assert ru("voice.queue_hold") in said
    assert f"[waiting in the operator queue {QUEUE!r}]" in io.infos
    assert "[you left the queue]" in io.infos
    assert ru("voice.callback_accepted") in said
    assert result.ended_by == "hangup"
    [case] = await stored_cases(gateway.settings)
    assert (case.kind, case.status) == ("callback", "waiting")


async def test_simulator_waits_in_silence_and_ends(gateway: Gateway) -> None:
    io = ScriptedIO(["0", None])
    result = await simulator(gateway, io).call()
    assert result.ended_by == "enqueue"
    assert ru("voice.queue_hold") in " ".join(text for text, _ in io.said)
    # The simulated call then ends: the caller gave up waiting.
    [case] = await stored_cases(gateway.settings)
    assert (case.kind, case.status, case.outcome) == ("transfer", "abandoned", "hung_up")


async def test_leaving_a_queue_without_state_still_stores_the_request(gateway: Gateway) -> None:
    """A caller queued by the stateless apology (no case, no session) who pressed `*`."""
    call = gateway.call()
    await post(call, f"/ivr/queue-result?c={call.call_sid}&l=ru", QueueResult="leave")
    assert ru("voice.callback_accepted") in call.text and call.verbs()[-1] == "Hangup"
    [case] = await stored_cases(gateway.settings)
    assert (case.kind, case.status, case.phone, case.reason) == (
        "callback",
        "waiting",
        MOBILE,
        "error",
    )
