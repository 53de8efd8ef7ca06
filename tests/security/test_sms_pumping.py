"""§6.14: SMS pumping and toll fraud, through our replies and through code destinations.

Every inbound SMS used to get a reply, whatever the sender: from abroad, from a satellite or
premium-rate number, without limit. A reply is an SMS we pay for, so these are the rules:
none to a sender we may not text; at most 5 an hour to a sender with no recovery in progress,
a recovery's replies bounded by its own cap; all of them within a budget of their own; and
nothing ever goes to a premium-rate or non-geographic number on file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

import pytest
from _pytest.mark.structures import MarkDecorator

from core.kit.phones import outbound_allowed
from core.platform.settings import Settings
from sms.thread import SmsThreads
from tests.conftest import (
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    UNKNOWN,
    Gateway,
    seed_accounts,
)
from tests.ivr.test_webhooks import audit_events
from tests.security.test_rate_limits import EXTRA_ACCOUNTS_CSV
from tests.support.twilio_driver import Call, Phone
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()
HOTLINE = "+78005550100"
STRANGER = "+79990001122"
OTHER_STRANGER = "+79990003344"

# Senders that must never get a reply (and whose messages do nothing at all).
REFUSED_SENDERS = {
    "uk-mobile": "+447400123456",
    "us-number": "+12025550123",
    "satellite-881": "+881612345678",
    "kazakhstan-mobile": "+77012345678",
    "ru-premium-809": "+78095551234",
    "ru-premium-803": "+78035551234",
    "ru-personal-808": "+78085551234",
    "ru-freephone-800": "+78004445566",
}
PREMIUM_ACCOUNT = "1000000809"
PREMIUM = "+78095551234"


def reply(key: str, language: Language = Language.ru) -> str:
    return PROMPTS.text(key, language, hotline=HOTLINE)


@pytest.fixture
def settings(settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The suite's settings, with the limits a test names."""
    overrides: Mapping[str, int] = getattr(request, "param", {})
    return settings.model_copy(update=dict(overrides))


def limits(**values: int) -> MarkDecorator:
    ids = ["-".join(f"{name.removeprefix('rate_limit_')}={n}" for name, n in values.items())]
    return pytest.mark.parametrize("settings", [values], indirect=True, ids=ids)


def is_silent(document: str) -> bool:
    """An empty <Response/>: Twilio sends nothing."""
    root = ET.fromstring(document)
    return root.tag == "Response" and len(root) == 0


@pytest.mark.parametrize("sender", REFUSED_SENDERS.values(), ids=REFUSED_SENDERS.keys())
async def test_senders_we_may_not_text_get_no_reply_and_change_nothing(
    gateway: Gateway, sender: str
) -> None:
    phone = Phone(gateway.twilio, sender)
    for body in ("ПОМОЩЬ", "HELP", f"ВОССТАНОВИТЬ {MOBILE_ONLY}", "123456", "СТОП", "привет"):
        response = await phone.post_sms(body)
        assert response.status_code == 200
        assert is_silent(response.text), body
    # Not served either: no recovery started, nothing sent, nothing audited.
    assert gateway.messenger.sent == []
    assert await audit_events(gateway.settings) == []


def test_the_destination_rule() -> None:
    """Only ordinary lines in an allowed country; fails closed on anything it cannot place."""
    for number in (MOBILE, LANDLINE, "+79781234567"):
        assert outbound_allowed(number, ["RU"]), number
    for number in REFUSED_SENDERS.values():
        assert not outbound_allowed(number, ["RU"]), number
    # A country allowed by configuration still refuses its premium and satellite ranges.
    assert outbound_allowed("+447400123456", ["RU", "GB"])
    assert not outbound_allowed("+448712345678", ["RU", "GB"])  # premium rate
    assert not outbound_allowed("+443001234567", ["RU", "GB"])  # UAN
    assert not outbound_allowed("+881612345678", ["RU", "001"])  # satellite: no country
    for junk in ("", "+7", "anonymous", "+79", "+0123456789"):
        assert not outbound_allowed(junk, ["RU"])


async def test_five_replies_an_hour_without_a_recovery_then_silence(gateway: Gateway) -> None:
    phone = Phone(gateway.twilio, STRANGER)
    answers = [(await phone.post_sms(body)).text for body in ["ПОМОЩЬ"] * 4 + ["привет"] * 3]
    assert [is_silent(a) for a in answers] == [False] * 5 + [True] * 2
    assert reply("sms.reply_help") in answers[0] and reply("sms.reply_unknown") in answers[4]
    # STOP and START are replies too (alternating them is no way around the limit)...
    assert await phone.text("STOP") == []
    assert await phone.text("START") == []
    # ...and they still take effect: the number is opted in again and can start a recovery,
    # whose replies count against the recovery, not against the sender.
    assert await phone.text(f"ВОССТАНОВИТЬ {UNKNOWN}") == [reply("sms.reply_requested")]
    # Another sender is not affected.
    assert await Phone(gateway.twilio, OTHER_STRANGER).text("ПОМОЩЬ") == [reply("sms.reply_help")]


async def test_a_recovery_in_progress_is_bounded_by_its_own_cap(gateway: Gateway) -> None:
    phone = Phone(gateway.twilio, STRANGER)
    assert await phone.text(f"ВОССТАНОВИТЬ {UNKNOWN}") == [reply("sms.reply_requested")]
    answers = [await phone.text("ЗВОНОК") for _ in range(10)]
    cap = gateway.settings.rate_limit_replies_per_recovery
    assert answers[: cap - 1] == [[reply("sms.reply_call_arranged")]] * (cap - 1)
    assert answers[cap - 1 :] == [[]] * (11 - cap)
    # A new recovery is a new allowance (recoveries are limited per sender on their own).
    assert await phone.text(f"ВОССТАНОВИТЬ {UNKNOWN}") == [reply("sms.reply_requested")]


async def test_the_code_that_answers_the_mobile_on_file_counts_as_its_reply(
    gateway: Gateway,
) -> None:
    """§4, §6.14: the owner's request is answered by the code SMS instead of a reply; it
    still counts as that reply, so the recovery's replies stop where they did before."""
    phone = Phone(gateway.twilio, MOBILE)
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    assert [m.purpose for m in gateway.messenger.to(MOBILE)] == ["code"]
    answers = [await phone.text("КОД 12") for _ in range(10)]
    cap = gateway.settings.rate_limit_replies_per_recovery
    assert answers[: cap - 1] == [[reply("sms.reply_code_malformed")]] * (cap - 1)
    assert answers[cap - 1 :] == [[]] * (11 - cap)


@limits(rate_limit_caller_starts_per_hour=1)
async def test_requests_over_the_start_limit_are_not_a_recovery(gateway: Gateway) -> None:
    phone = Phone(gateway.twilio, STRANGER)
    assert await phone.text(f"ВОССТАНОВИТЬ {UNKNOWN}") == [reply("sms.reply_requested")]
    await phone.text("ОТМЕНА")
    answers = [await phone.text(f"ВОССТАНОВИТЬ {UNKNOWN}") for _ in range(7)]
    # Held back by the start limit: the sender's 5 an hour, then silence.
    assert answers == [[reply("sms.reply_limited")]] * 5 + [[]] * 2


@limits(rate_limit_global_replies_per_hour=3, rate_limit_global_outbound_per_hour=1)
async def test_replies_have_a_budget_of_their_own(gateway: Gateway) -> None:
    senders = [f"+7999000{n:04d}" for n in range(3)]
    for sender in senders:
        assert await Phone(gateway.twilio, sender).text("ПОМОЩЬ") == [reply("sms.reply_help")]
    # The replies' budget is spent: silence, for everyone...
    resident = Phone(gateway.twilio, MOBILE)
    assert await resident.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    # ...but the codes' budget was not touched by the replies: the code still goes out.
    assert [m.to for m in gateway.messenger.sent if m.purpose == "code"] == [MOBILE]


async def test_a_failure_is_no_way_around_the_rule(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The apology for a crash is a reply too: not to a sender we may not text."""

    async def redis_down(self: SmsThreads, message_sid: str) -> str | None:
        raise ConnectionError("redis down")

    monkeypatch.setattr(SmsThreads, "claim", redis_down)
    abroad = await Phone(gateway.twilio, REFUSED_SENDERS["uk-mobile"]).post_sms("HELP")
    assert abroad.status_code == 200 and is_silent(abroad.text)
    assert await Phone(gateway.twilio, STRANGER).text("HELP") == [reply("sms.reply_error")]


# -- code destinations ------------------------------------------------------------------


@pytest.fixture
async def premium_on_file(gateway: Gateway) -> Gateway:
    """An account whose only phone on file is a premium-rate number (a poisoned record)."""
    await seed_accounts(
        gateway.settings,
        EXTRA_ACCOUNTS_CSV.splitlines()[0]
        + f"\n{PREMIUM_ACCOUNT},premium.x,Премиум Иван Иванович,{PREMIUM},\n",
    )
    return gateway


async def call_back_documents(gateway: Gateway, account: str) -> list[str]:
    """A stranger asks for the code by a call to the phone on file."""
    call = Call(gateway.twilio, caller=STRANGER)
    await call.start()
    documents = [call.raw]
    for keys in ("1", account + "#", "1", "2"):
        await call.press(keys)
        documents.append(call.raw)
    await call.hang_up()  # the code call is placed once the caller hung up
    return documents


async def test_no_code_call_to_a_premium_number_and_the_caller_cannot_tell(
    premium_on_file: Gateway,
) -> None:
    gateway = premium_on_file
    premium = await call_back_documents(gateway, PREMIUM_ACCOUNT)
    landline = await call_back_documents(gateway, LANDLINE_ONLY)
    for index, (a, b) in enumerate(zip(premium, landline, strict=True)):
        if index != 2:  # the read-back of the digits keyed
            assert a == b, f"document {index} differs"
    assert gateway.messenger.to(PREMIUM, "call") == []
    assert len(gateway.messenger.to(LANDLINE, "call")) == 1
    placed = [
        d["delivered"] for e, d in await audit_events(gateway.settings) if e == "code.call_placed"
    ]
    assert placed == [False, True]  # recorded as not delivered, said as sent (§6.2)
