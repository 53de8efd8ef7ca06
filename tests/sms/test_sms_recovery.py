"""Recovery through the short number, over signed SMS webhooks through the real app (§4)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from core.kit.segments import sms_segments
from core.models import Escalation, EscalationKind, OutboxMessage
from core.platform.db import create_engine, create_sessionmaker
from tests.conftest import (
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    SECOND_MOBILE,
    TWO_MOBILES_EMAIL,
    UNKNOWN,
    Gateway,
    queued_emails,
)
from tests.support.twilio_driver import Phone
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()
HOTLINE = "+78005550100"


def reply(key: str, language: Language = Language.ru) -> str:
    return PROMPTS.text(key, language, hotline=HOTLINE)


def code_in(gateway: Gateway, number: str) -> str:
    messages = [m for m in gateway.messenger.to(number) if m.purpose == "code"]
    assert messages, f"no code SMS to {number}"
    match = re.search(r"\b(\d{6})\b", messages[-1].body)
    assert match
    return match.group(1)


async def accepted(gateway: Gateway, account: str, password: str) -> tuple[bool, bool]:
    """Ask the directory whether it accepts a password: (accepted, change_required)."""
    return await gateway.password_check(account, password)


@pytest.fixture
def gateway(either_gateway: Gateway) -> Gateway:
    """Every recovery path here runs with the SQL directory and with the cabinet's API (§11)."""
    return either_gateway


@pytest.fixture
def phone(gateway: Gateway) -> Phone:
    return Phone(gateway.twilio, MOBILE)


@pytest.mark.parametrize(
    ("request_text", "language"),
    [
        (f"ВОССТАНОВИТЬ {MOBILE_ONLY}", Language.ru),
        (f"  востановить: {MOBILE_ONLY[:4]} {MOBILE_ONLY[4:]}!", Language.ru),
        (f"vosstanovit {MOBILE_ONLY}", Language.ru),
        (f"Restore {MOBILE_ONLY}", Language.en),
    ],
)
async def test_password_by_sms(
    gateway: Gateway, phone: Phone, request_text: str, language: Language
) -> None:
    # The mobile on file asks: the code SMS is the reply (it says to send the code back).
    assert await phone.text(request_text) == []
    [code_sms] = gateway.messenger.to(MOBILE)
    code = code_in(gateway, MOBILE)
    assert code_sms.body == PROMPTS.text("sms.code_reply", language, code=code)
    assert await phone.text(f"КОД {code}" if language is Language.ru else code) == []
    password_sms = gateway.messenger.to(MOBILE)[-1]
    assert password_sms.purpose == "password"
    # The password ends its line: no full stop glued to it when the resident copies it.
    password = password_sms.body.split()[3]
    assert password_sms.body.split("\n")[0].endswith(" " + password)
    assert await accepted(gateway, MOBILE_ONLY, password) == (True, True)


async def sms_segments_received(gateway: Gateway, phone: Phone, body: str) -> int:
    """Send one SMS; the segments of its TwiML reply (what the phone receives in answer)."""
    return sum(sms_segments(text) for text in await phone.text(body))


@pytest.mark.parametrize("command", ["ВОССТАНОВИТЬ", "ЛОГИН", "RESTORE", "LOGIN"])
async def test_a_whole_sms_recovery_costs_the_resident_two_segments(
    gateway: Gateway, phone: Phone, command: str
) -> None:
    """§4, §9 (issue 14): every segment the resident's phone gets on the SMS channel for one
    successful recovery — replies and messages — is at most 2: the code and the credential."""
    received = await sms_segments_received(gateway, phone, f"{command} {MOBILE_ONLY}")
    received += await sms_segments_received(gateway, phone, code_in(gateway, MOBILE))
    messages = gateway.messenger.to(MOBILE)
    assert [m.purpose for m in messages] == [
        "code",
        "password" if command in ("ВОССТАНОВИТЬ", "RESTORE") else "login",
    ]
    received += sum(sms_segments(m.body) for m in messages)
    assert received <= 2


async def test_login_by_sms(gateway: Gateway, phone: Phone) -> None:
    await phone.text(f"логин {MOBILE_ONLY}")
    assert await phone.text(code_in(gateway, MOBILE)) == []
    assert gateway.messenger.to(MOBILE)[-1].body.endswith("ivanova.mv")


async def test_the_reply_is_the_same_for_every_sender_but_the_mobile_on_file(
    gateway: Gateway,
) -> None:
    """§4 (revised): the mobile on file gets its code as the reply; every other sender gets
    the uniform reply, byte for byte the same whether or not the account exists or has a
    mobile; and the only code goes to the mobile on file."""
    stranger = Phone(gateway.twilio, "+79990001122")
    landline = Phone(gateway.twilio, LANDLINE)
    documents = [
        (await stranger.post_sms(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")).text,
        (await stranger.post_sms(f"ВОССТАНОВИТЬ {UNKNOWN}")).text,
        (await stranger.post_sms(f"ВОССТАНОВИТЬ {LANDLINE_ONLY}")).text,
        # A landline on file is not a mobile: it gets no code by SMS, and the same reply.
        (await landline.post_sms(f"ВОССТАНОВИТЬ {LANDLINE_ONLY}")).text,
        (await landline.post_sms(f"ВОССТАНОВИТЬ {UNKNOWN}")).text,
        # The mobile on file of another account asking for this one is a stranger here.
        (await Phone(gateway.twilio, SECOND_MOBILE).post_sms(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")).text,
    ]
    assert len(set(documents)) == 1
    assert reply("sms.reply_requested") in documents[0]
    assert [m for m in gateway.messenger.sent if m.purpose == "code"] == []

    # The owner's reply is the code itself, to that phone only; no second reply.
    assert await Phone(gateway.twilio, MOBILE).text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    codes = [m for m in gateway.messenger.sent if m.purpose == "code"]
    assert [m.to for m in codes] == [MOBILE]


async def test_code_goes_to_the_asking_mobile_and_others_are_told(gateway: Gateway) -> None:
    second = Phone(gateway.twilio, SECOND_MOBILE)
    await second.text(f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}")
    await second.text(code_in(gateway, SECOND_MOBILE))
    assert gateway.messenger.to(SECOND_MOBILE)[-1].purpose == "password"
    first = gateway.messenger.to("+79037771230")
    assert [m.purpose for m in first] == ["notice"]
    assert await queued_emails(gateway.settings, "e.smirnova@example.ru")


async def test_a_stop_does_not_silence_the_notice_of_a_recovery(gateway: Gateway) -> None:
    """§4, §6.8: a STOP (spoofed, say) keeps the opt-out, but not from the security notice."""
    first = Phone(gateway.twilio, "+79037771230")
    assert await first.text("СТОП") == [reply("sms.reply_stopped")]
    second = Phone(gateway.twilio, SECOND_MOBILE)
    await second.text(f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}")
    await second.text(code_in(gateway, SECOND_MOBILE))
    assert [m.purpose for m in gateway.messenger.to("+79037771230")] == ["notice"]
    # Still opted out of everything else.
    assert await first.text(f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}") == []
    assert [m.purpose for m in gateway.messenger.to("+79037771230")] == ["notice"]


@pytest.mark.parametrize(
    ("request_text", "words"),
    [
        (f"ВОССТАНОВИТЬ {MOBILE_ONLY}", "для восстановления доступа"),
        (f"RESTORE {MOBILE_ONLY}", "to restore access"),
    ],
    ids=["ru", "en"],
)
async def test_the_code_sms_says_what_it_is_for_in_one_segment(
    gateway: Gateway, phone: Phone, request_text: str, words: str
) -> None:
    await phone.text(request_text)
    [message] = [m for m in gateway.messenger.to(MOBILE) if m.purpose == "code"]
    assert words in message.body and code_in(gateway, MOBILE) in message.body
    assert sms_segments(message.body) == 1


async def test_wrong_and_malformed_codes(gateway: Gateway, phone: Phone) -> None:
    assert await phone.text("123456") == [reply("sms.reply_no_request")]
    await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    code = code_in(gateway, MOBILE)
    wrong = "000000" if code != "000000" else "111111"
    assert await phone.text(wrong) == [reply("sms.reply_code_wrong")]
    assert await phone.text("КОД 12") == [reply("sms.reply_code_malformed")]
    # A digit missed or doubled: "the code has six digits", not "we did not understand".
    assert await phone.text(code[:5]) == [reply("sms.reply_code_malformed")]
    assert await phone.text(code + "1") == [reply("sms.reply_code_malformed")]
    assert await phone.text(code) == []


async def test_stop_silences_both_channels_until_start(gateway: Gateway, phone: Phone) -> None:
    assert await phone.text("СТОП") == [reply("sms.reply_stopped")]
    assert await phone.text("stop") == []  # one confirmation, once
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    assert await phone.text("ПОМОЩЬ") == []
    sent_before = len(gateway.messenger.sent)

    # The hotline sends no SMS to the opted-out number either.
    call = gateway.call()
    await call.start()
    for keys in ("1", MOBILE_ONLY + "#", "1", "1"):
        await call.press(keys)
    assert len(gateway.messenger.sent) == sent_before
    assert gateway.messenger.to(MOBILE) == [m for m in gateway.messenger.sent if m.to == MOBILE]
    assert not [m for m in gateway.messenger.sent if m.to == MOBILE]

    assert await phone.text("START") == [reply("sms.reply_started", Language.en)]
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []  # the code is the reply
    assert code_in(gateway, MOBILE)


async def test_operator_creates_a_callback_request(gateway: Gateway, phone: Phone) -> None:
    await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    assert await phone.text("оператор") == [reply("sms.reply_callback")]
    engine = create_engine(gateway.settings.database_url)
    async with create_sessionmaker(engine)() as session:
        requests = (await session.scalars(select(Escalation))).all()
    await engine.dispose()
    assert len(requests) == 1
    assert requests[0].phone == MOBILE and requests[0].channel == "sms"
    assert requests[0].account_masked == "*******001"
    assert requests[0].kind is EscalationKind.callback
    assert requests[0].verification == "code_sent"


async def test_help_and_unknown(gateway: Gateway, phone: Phone) -> None:
    help_text = await phone.text("помощь")
    assert help_text == [reply("sms.reply_help")] and HOTLINE in help_text[0]
    assert await phone.text("привет") == [reply("sms.reply_unknown")]
    assert await phone.text("HELP") == [reply("sms.reply_help", Language.en)]


async def test_retried_webhook_gets_the_same_reply_and_sends_once(
    gateway: Gateway, phone: Phone
) -> None:
    sid = "SM" + "ab" * 16
    first = await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}", sid=sid)
    second = await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}", sid=sid)
    assert first == second == []  # the code SMS is the reply
    assert len([m for m in gateway.messenger.sent if m.purpose == "code"]) == 1
    stranger = Phone(gateway.twilio, "+79990001122")
    sid = "SM" + "cd" * 16
    first = await stranger.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}", sid=sid)
    assert await stranger.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}", sid=sid) == first
    assert first == [reply("sms.reply_requested")]


async def status(gateway: Gateway, sid: str, state: str, error: str = "") -> int:
    params = {"MessageSid": sid, "MessageStatus": state, "AccountSid": "AC" + "0" * 32}
    if error:
        params["ErrorCode"] = error
    return (await gateway.twilio.post("/sms/status", params)).status_code


async def code_row(gateway: Gateway) -> OutboxMessage:
    engine = create_engine(gateway.settings.database_url)
    async with create_sessionmaker(engine)() as session:
        row = await session.scalar(
            select(OutboxMessage)
            .where(OutboxMessage.purpose == "code")
            .order_by(OutboxMessage.id.desc())
        )
    await engine.dispose()
    assert row is not None and row.provider_sid
    return row


def wrong_code(gateway: Gateway, number: str) -> str:
    return "000000" if code_in(gateway, number) != "000000" else "111111"


async def test_a_bounced_code_changes_no_reply(gateway: Gateway, phone: Phone) -> None:
    """§4, §6.2: a bounce happens only to a real account's code, so it is recorded and never
    announced; the request's reply offers the call to everyone in the same words."""
    assert "ЗВОНОК" in reply("sms.reply_requested") and "CALL" in reply(
        "sms.reply_requested", Language.en
    )
    # The owners' requests are answered by their code SMS (no TwiML reply), whether or not
    # that SMS bounces; the replies after it are compared below.
    bounced = [(await phone.post_sms(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")).text]
    row = await code_row(gateway)
    assert await status(gateway, row.provider_sid or "", "undelivered", "30007") == 204
    updated = await code_row(gateway)
    assert (updated.status, updated.error_code) == ("undelivered", "30007")
    for body in (wrong_code(gateway, MOBILE), "КОД 12", "ЗВОНОК"):
        bounced.append((await phone.post_sms(body)).text)

    # Another resident, on file, whose code arrived: the same replies, word for word.
    delivered_to = Phone(gateway.twilio, SECOND_MOBILE)
    delivered = [(await delivered_to.post_sms(f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}")).text]
    for body in (wrong_code(gateway, SECOND_MOBILE), "КОД 12", "ЗВОНОК"):
        delivered.append((await delivered_to.post_sms(body)).text)
    assert bounced == delivered
    assert bounced[1] != bounced[2]  # the documents hold the replies, not just empty answers
    # And the request's reply reads the same to a stranger, for this account or an unknown one.
    stranger = Phone(gateway.twilio, "+79990001122")
    asked = (await stranger.post_sms(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")).text
    assert (await stranger.post_sms(f"ВОССТАНОВИТЬ {UNKNOWN}")).text == asked
    # The call is placed to the phone on file all the same.
    assert len(gateway.messenger.to(MOBILE, "call")) == 1


async def test_delivered_status_is_recorded(gateway: Gateway, phone: Phone) -> None:
    await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    row = await code_row(gateway)
    assert await status(gateway, row.provider_sid or "", "delivered") == 204
    assert (await code_row(gateway)).status == "delivered"
    assert await status(gateway, "SM" + "0" * 32, "delivered") == 204  # not ours: ignored


async def code_prompts(gateway: Gateway, account: str, bounce: bool) -> list[str]:
    """The documents of a call's code step: a malformed code, a wrong one, then `2` (call)."""
    call = gateway.call(caller="+79990001122")
    await call.start()
    for keys in ("1", account + "#", "1", "1"):
        await call.press(keys)
    if bounce:
        row = await code_row(gateway)
        assert await status(gateway, row.provider_sid or "", "failed", "30007") == 204
        assert (await code_row(gateway)).status == "failed"
    documents = []
    for keys in ("12", wrong_code(gateway, MOBILE) if bounce else "000000", "*", "2"):
        await call.press(keys)
        documents.append(call.raw)
    await call.hang_up()  # the code call is placed once the caller hung up
    return documents


async def test_a_bounced_code_changes_nothing_on_the_hotline(gateway: Gateway) -> None:
    """The code prompt offers the call to everybody ("если СМС не пришло"); a bounce is
    recorded and changes not a byte of what the caller hears (§4, §6.2)."""
    for key in ("voice.code_entry", "voice.code_entry_short"):
        assert "Если СМС не пришло" in PROMPTS.text(key, Language.ru)
    bounced = await code_prompts(gateway, MOBILE_ONLY, bounce=True)
    unknown = await code_prompts(gateway, UNKNOWN, bounce=False)
    assert bounced == unknown
    assert PROMPTS.text("voice.code_entry_short", Language.ru) in bounced[0]
    assert len(gateway.messenger.to(MOBILE, "call")) == 1


async def test_sms_webhooks_need_a_signature(gateway: Gateway, phone: Phone) -> None:
    params = {"MessageSid": "SM" + "1" * 32, "From": MOBILE, "Body": f"ВОССТАНОВИТЬ {MOBILE_ONLY}"}
    for path in ("/sms/inbound", "/sms/status"):
        response = await gateway.twilio.post(path, params, signature="bm90LWEtc2lnbmF0dXJl")
        assert response.status_code == 403
        unsigned = await gateway.twilio.http.post(path, data=params)
        assert unsigned.status_code == 403
    assert gateway.messenger.sent == []


@pytest.mark.parametrize(
    "body", ["<Message>&amp;</Message>", "]]>", "😀" * 50, "x" * 5000, "\x00\x01", ""]
)
async def test_odd_bodies_get_a_well_formed_answer(
    gateway: Gateway, phone: Phone, body: str
) -> None:
    replies = await phone.text(body)
    assert len(replies) <= 1
