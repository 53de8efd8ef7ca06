"""The operators' desk phone signs in with the operator's number and PIN before anything (§6.11).

A stranger who dials the desk hears nothing about a case and is bridged to nobody; a wrong PIN
ends the call; guessing is limited per calling number and, from numbers no operator has used, in
all; an operator on their usual desk phone still gets in while strangers guess.
"""

from __future__ import annotations

import json
import secrets
import xml.etree.ElementTree as ET
from urllib.parse import urljoin

import pytest
from sqlalchemy import select
from structlog.testing import capture_logs

from core.models import AuditEvent
from core.operators.repository import OperatorRepository
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import OperatorRoute, Settings
from tests.conftest import MOBILE_ONLY, Gateway
from tests.ivr.conftest import OPEN_NOW, set_clock, stored_cases
from tests.ivr.test_webhooks import PROMPTS, at_account_confirm, ru
from tests.support.hashing import counting_hashes
from voice_prompts import Language

QUEUE = "eirc-operators"
DESK_PIN = "48213579"
DESK_PHONE = "+74950000001"
PER_CALLER = 3
UNRECOGNISED = 4


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "operator_route": OperatorRoute.enqueue,
            "operator_queue": QUEUE,
            "operator_desk_signin_per_caller": PER_CALLER,
            "operator_desk_signin_unrecognised": UNRECOGNISED,
        }
    )


@pytest.fixture(autouse=True)
def desk_open(gateway: Gateway) -> None:
    set_clock(gateway, OPEN_NOW)


async def add_desk_operator(
    settings: Settings, username: str = "ivanova", pin: str | None = DESK_PIN
) -> int:
    """An operator (with a desk PIN unless `pin` is None); their desk number."""
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            operators = OperatorRepository(session)
            info = await operators.add(username, "a long enough password")
            if pin is not None:
                await operators.set_desk_pin(username, pin)
            return info.desk_number
    finally:
        await engine.dispose()


@pytest.fixture
async def desk_number(gateway: Gateway) -> int:
    return await add_desk_operator(gateway.settings)


class DeskCall:
    """One call to the desk number, as Twilio would post it."""

    def __init__(self, gateway: Gateway, caller: str = DESK_PHONE) -> None:
        self.gateway = gateway
        self.caller = caller
        self.call_sid = "CA" + secrets.token_hex(16)
        self.document = ET.Element("Response")
        self.path = "/ivr/operator-desk"

    async def post(self, url: str, **params: str) -> ET.Element:
        path = urljoin(self.path, url)
        form = {
            "AccountSid": "AC" + "0" * 32,
            "CallSid": self.call_sid,
            "CallStatus": "in-progress",
            "Direction": "inbound",
            "From": self.caller,
            "To": "+78005550102",
            **params,
        }
        response = await self.gateway.twilio.post(path, form)
        assert response.status_code == 200, response.text
        self.document, self.path = ET.fromstring(response.text), path
        return self.document

    async def dial(self) -> ET.Element:
        return await self.post("/ivr/operator-desk")

    async def key(self, digits: str) -> ET.Element:
        gather = self.document.find("Gather")
        assert gather is not None, self.text
        return await self.post(str(gather.get("action")), Digits=digits)

    async def sign_in(self, number: int | str, pin: str) -> ET.Element:
        await self.dial()
        await self.key(str(number))
        return await self.key(pin)

    async def follow(self) -> ET.Element:
        redirect = self.document.findtext("Redirect")
        assert redirect, self.text
        return await self.post(redirect)

    @property
    def text(self) -> str:
        return " ".join("".join(say.itertext()) for say in self.document.iter("Say"))

    @property
    def bridges(self) -> bool:
        return self.document.find("Dial") is not None or self.document.find(".//Queue") is not None

    @property
    def hung_up(self) -> bool:
        return self.document.find("Hangup") is not None


async def a_caller_waits(gateway: Gateway) -> None:
    call = await at_account_confirm(gateway)
    await call.press("0")
    assert call.twiml.find("Enqueue") is not None


def says_nothing_about_a_case(desk: DeskCall) -> None:
    text = desk.text
    assert ru("whisper.desk_waiting", count=1).split(":")[0] not in text
    assert PROMPTS.digits(MOBILE_ONLY[-3:], Language.ru) not in text
    assert ru("whisper.reason_caller_request") not in text
    assert not desk.bridges


async def events(settings: Settings, name: str) -> list[AuditEvent]:
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = await session.scalars(
                select(AuditEvent).where(AuditEvent.event == name).order_by(AuditEvent.id)
            )
            return list(rows)
    finally:
        await engine.dispose()


async def test_a_stranger_without_a_pin_hears_nothing_and_is_not_bridged(
    gateway: Gateway, desk_number: int
) -> None:
    await a_caller_waits(gateway)
    stranger = DeskCall(gateway, "+79990001122")
    await stranger.dial()
    says_nothing_about_a_case(stranger)
    assert ru("whisper.desk_number") in stranger.text
    await stranger.key(str(desk_number))
    says_nothing_about_a_case(stranger)
    assert ru("whisper.desk_pin") in stranger.text
    await stranger.key("")  # silence: no PIN
    says_nothing_about_a_case(stranger)
    assert stranger.hung_up and ru("whisper.desk_refused") in stranger.text
    # The resident still waits, untouched.
    [case] = await stored_cases(gateway.settings)
    assert (case.status, case.outcome) == ("waiting", None)
    # Going straight to the queue URL from the same call changes nothing.
    await stranger.dial()
    says_nothing_about_a_case(stranger)


async def test_a_wrong_pin_ends_the_call_and_the_right_one_cannot_follow_it(
    gateway: Gateway, desk_number: int
) -> None:
    await a_caller_waits(gateway)
    desk = DeskCall(gateway)
    with capture_logs() as logged:
        await desk.sign_in(desk_number, "11223344")
    says_nothing_about_a_case(desk)
    assert desk.hung_up and ru("whisper.desk_refused") in desk.text
    assert "desk.signin_refused" in {line["event"] for line in logged}
    assert "11223344" not in repr(logged) and DESK_PIN not in repr(logged)
    # One guess per call: the right PIN posted again in the same call is refused too.
    await desk.post(f"/ivr/operator-desk/pin?o={desk_number}", Digits=DESK_PIN)
    says_nothing_about_a_case(desk)
    assert desk.hung_up
    refused = await events(gateway.settings, "operator.desk_signin_refused")
    assert [json.loads(event.detail)["reason"] for event in refused] == ["wrong", "second_try"]
    assert all(DESK_PIN not in event.detail and "11223344" not in event.detail for event in refused)
    assert not await events(gateway.settings, "operator.desk_signed_in")


async def test_the_right_pin_signs_in_then_the_desk_speaks_and_bridges(
    gateway: Gateway, desk_number: int
) -> None:
    await a_caller_waits(gateway)
    desk = DeskCall(gateway)
    with capture_logs() as logged:
        await desk.sign_in(desk_number, DESK_PIN)
    says_nothing_about_a_case(desk)
    assert ru("whisper.desk_signed_in") in desk.text
    assert "desk.signed_in" in {line["event"] for line in logged}
    assert DESK_PIN not in repr(logged)
    await desk.follow()
    assert ru("whisper.desk_waiting", count=1).split(":")[0] in desk.text
    queue = desk.document.find("Dial/Queue")
    assert queue is not None and queue.text == QUEUE
    # The Dial's action brings the operator back to the desk, still signed in.
    await desk.dial()
    assert desk.bridges
    [event] = await events(gateway.settings, "operator.desk_signed_in")
    detail = json.loads(event.detail)
    assert (detail["operator"], detail["method"]) == ("ivanova", "pin")
    assert DESK_PIN not in event.detail and DESK_PHONE not in event.detail


async def test_unknown_number_no_pin_wrong_pin_and_right_pin_cost_one_argon2_check_each(
    gateway: Gateway, desk_number: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_pin = await add_desk_operator(gateway.settings, "petrov", pin=None)
    gateway.app.state.services.settings = gateway.settings.model_copy(
        update={"operator_desk_signin_unrecognised": 10}
    )
    costs = {}
    with counting_hashes(monkeypatch) as spy:
        for name, number, pin in [
            ("unknown", "9999", DESK_PIN),
            ("not a number", "", DESK_PIN),
            ("no pin", str(without_pin), DESK_PIN),
            ("wrong", str(desk_number), "11223344"),
            ("right", str(desk_number), DESK_PIN),
        ]:
            spy.reset()
            desk = DeskCall(gateway, f"+7999{secrets.randbelow(10**7):07d}")
            await desk.post(f"/ivr/operator-desk/pin?o={number}", Digits=pin)
            costs[name] = (spy.verified, spy.hashed)
    assert set(costs.values()) == {(1, 0)}, costs


async def test_guessing_from_one_number_is_limited(gateway: Gateway, desk_number: int) -> None:
    for _ in range(PER_CALLER):
        desk = DeskCall(gateway, "+79990001122")
        await desk.sign_in(desk_number, "11223344")
        assert ru("whisper.desk_refused") in desk.text
    # The next call from that number is told so at once, and even the right PIN is not checked.
    desk = DeskCall(gateway, "+79990001122")
    await desk.dial()
    assert desk.hung_up and ru("whisper.desk_limited") in desk.text
    assert desk.document.find("Gather") is None
    await desk.post(f"/ivr/operator-desk/pin?o={desk_number}", Digits=DESK_PIN)
    assert ru("whisper.desk_limited") in desk.text and not desk.bridges
    # Another number is not held back by that one.
    other = DeskCall(gateway, "+79990003344")
    await other.sign_in(desk_number, DESK_PIN)
    assert ru("whisper.desk_signed_in") in other.text


async def test_guessing_from_many_numbers_is_limited_in_all(
    gateway: Gateway, desk_number: int
) -> None:
    for index in range(UNRECOGNISED):
        desk = DeskCall(gateway, f"+7999000{index:04d}")
        await desk.sign_in(desk_number, "11223344")
        assert ru("whisper.desk_refused") in desk.text
    fresh = DeskCall(gateway, "+79995556677")
    await fresh.dial()
    assert fresh.hung_up and ru("whisper.desk_limited") in fresh.text


async def test_a_real_operator_gets_in_while_strangers_guess_from_other_numbers(
    gateway: Gateway, desk_number: int
) -> None:
    await a_caller_waits(gateway)
    # The operator's usual desk phone: signed in from before.
    first = DeskCall(gateway)
    await first.sign_in(desk_number, DESK_PIN)
    assert ru("whisper.desk_signed_in") in first.text
    # Strangers use up everything from their numbers (one wrong try each, then limited).
    for index in range(UNRECOGNISED + 2):
        stranger = DeskCall(gateway, f"+7999000{index:04d}")
        await stranger.post(f"/ivr/operator-desk/pin?o={desk_number}", Digits=f"{11223344 + index}")
        assert not stranger.bridges and stranger.hung_up
    assert ru("whisper.desk_limited") in stranger.text
    # The operator calls again from the desk phone, and again, and again: never held back
    # (a successful sign-in spends no limit).
    for _ in range(PER_CALLER + 1):
        desk = DeskCall(gateway)
        await desk.sign_in(desk_number, DESK_PIN)
        assert ru("whisper.desk_signed_in") in desk.text, desk.text
    await desk.follow()
    assert desk.bridges
    assert ru("whisper.desk_waiting", count=1).split(":")[0] in desk.text


@pytest.mark.parametrize(
    ("trust", "caller", "asked_for_pin"),
    [
        (False, "sip:desk-1@pbx.eirc.example", True),
        (True, "sip:desk-1@pbx.eirc.example", False),
        (True, DESK_PHONE, True),
    ],
    ids=["sip-not-trusted", "sip-trusted", "pstn-never-trusted"],
)
async def test_a_trusted_sip_desk_may_skip_the_pin(
    gateway: Gateway, trust: bool, caller: str, asked_for_pin: bool
) -> None:
    gateway.app.state.services.settings = gateway.settings.model_copy(
        update={"operator_desk_trust_sip": trust}
    )
    await a_caller_waits(gateway)
    desk = DeskCall(gateway, caller)
    await desk.dial()
    if asked_for_pin:
        says_nothing_about_a_case(desk)
        assert ru("whisper.desk_number") in desk.text
    else:
        assert desk.bridges
        [event] = await events(gateway.settings, "operator.desk_signed_in")
        assert json.loads(event.detail)["method"] == "sip"


def test_sip_trust_is_off_by_default() -> None:
    assert Settings(_env_file=None).operator_desk_trust_sip is False
