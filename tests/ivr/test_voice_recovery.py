"""Complete recoveries over signed voice webhooks through the real app."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from core.accounts.directory import SqlAccountDirectory
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import DirectoryKind
from core.recovery.service import RecoveryService
from tests.conftest import (
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    SECOND_MOBILE,
    TWO_MOBILES_EMAIL,
    Gateway,
    queued_emails,
    set_temporary_password,
)
from tests.support.twilio_driver import Call, Phone
from voice_prompts import Language, load_catalogue

CODE = re.compile(r"\b(\d{6})\b")


def last_code(gateway: Gateway, phone: str) -> str:
    """The code in the newest SMS to a phone."""
    sms = gateway.messenger.to(phone)
    assert sms, f"no SMS to {phone}"
    match = CODE.search(sms[-1].body)
    assert match, "no code in the SMS"
    return match.group(1)


async def check_password(gateway: Gateway, account: str, password: str) -> tuple[bool, bool]:
    """Ask the directory whether it accepts a password: (accepted, change_required)."""
    return await gateway.password_check(account, password)


SQL_ONLY = pytest.mark.parametrize("either_gateway", [DirectoryKind.sql], indirect=True)


@pytest.fixture
def gateway(either_gateway: Gateway) -> Gateway:
    """Every recovery path here runs with the SQL directory and with the cabinet's API (§11)."""
    return either_gateway


async def reach_method_choice(call: Call, account: str, purpose_key: str = "1") -> None:
    """Main menu → purpose → account by keypad → confirmed."""
    await call.start()
    assert "1" in call.text and call.gather.get("numDigits") == "1"
    await call.press(purpose_key)
    assert call.gather.get("input") == "dtmf speech"
    await call.press(account + "#")
    assert ", ".join(["один", "ноль"]) in call.text  # read back digit by digit
    await call.press("1")


async def spoken_password(call: Call) -> str:
    """Rebuild the password from its spelled groups ("А, как Анна. Три…")."""
    first_words = {
        "ноль": "0",
        "один": "1",
        "два": "2",
        "три": "3",
        "четыре": "4",
        "пять": "5",
        "шесть": "6",
        "семь": "7",
        "восемь": "8",
        "девять": "9",
    }
    from voice_prompts import Language, load_catalogue

    catalogue = load_catalogue()
    names = {
        catalogue.spelled(letter, Language.ru)[0].split(",")[0]: letter
        for letter in "abcdefghijklmnopqrstuvwxyz"
    }
    password = ""
    for say in call.twiml.iter("Say"):
        text = "".join(say.itertext())
        if " группа: " not in text:
            continue
        # "Первая группа: а, как Анна, три, …": the word after "как" only helps the ear.
        for part in text.split(": ", 1)[1].rstrip(".").split(", "):
            if part.startswith("как "):
                continue
            password += first_words.get(part) or names[part]
    return password


async def test_password_by_keypad_and_sms_code(gateway: Gateway) -> None:
    call = gateway.call(caller="+79990001122")  # caller ID is not the phone on file
    await reach_method_choice(call, MOBILE_ONLY)
    assert "телефон из лицевого счёта" in call.text
    await call.press("1")
    assert "Код отправлен в СМС" in call.text
    code = last_code(gateway, MOBILE)
    await call.press(code)
    password = await spoken_password(call)
    assert len(password) == gateway.settings.temp_password_length
    assert "нажмите звёздочку" in call.text
    # Its lifetime, with the noun in the right form (1 h by default, §5).
    assert "Он действует 1 час," in call.text
    # The password also arrives by SMS.
    assert password in gateway.messenger.to(MOBILE)[-1].body
    # `*` repeats it; silence ends the call politely.
    also_sent = load_catalogue().text("voice.also_sent_sms", Language.ru)
    assert also_sent in call.text
    await call.press("*")
    assert await spoken_password(call) == password
    assert also_sent in call.text  # still true on the repeat
    await call.silence()
    assert call.verbs()[-1] == "Hangup" and "До свидания" in call.text

    assert await check_password(gateway, MOBILE_ONLY, password) == (True, True)


async def test_login_by_speech(gateway: Gateway) -> None:
    call = gateway.call()
    await call.start()
    await call.press("2")
    await call.say("один ноль ноль ноль ноль ноль ноль ноль ноль один")
    # Read back alike whether keyed or spoken: not "Вы ввели" (§3).
    assert "Номер счёта: один, ноль" in call.text and "ввели" not in call.text
    await call.press("1")
    await call.press("1")
    await call.say(" ".join(last_code(gateway, MOBILE)))  # "1 2 3 4 5 6" as Twilio returns
    assert "ivanova" not in call.text  # the login is spelled, letter by letter
    assert "маленькими латинскими буквами: и, как Иван, вэ, как Вера" in call.text
    assert "точка, эм, как Маша" in call.text
    assert gateway.messenger.to(MOBILE)[-1].body.endswith("ivanova.mv")


async def test_compound_speech_account_number(gateway: Gateway) -> None:
    call = gateway.call()
    await call.start()
    await call.press("1")
    # "сто", "ноль ноль", … — a mix Twilio may return: read back as the right digits.
    await call.say("10 00 00 00 01")
    assert "Номер счёта: один, ноль, ноль" in call.text


async def test_voice_call_verification_on_a_landline(gateway: Gateway) -> None:
    call = gateway.call(caller=LANDLINE)
    await reach_method_choice(call, LANDLINE_ONLY)
    await call.press("2")
    assert call.verbs()[-1] == "Hangup"
    # Placed once the caller has hung up (the line may be the one in their hand).
    assert gateway.messenger.to(LANDLINE, "call") == []
    assert await call.hang_up() == 204
    placed = gateway.messenger.to(LANDLINE, "call")
    assert len(placed) == 1

    # The gateway calls the phone on file; nothing secret before a key press.
    callback = Call(gateway.twilio, caller="+78005550100", called=LANDLINE)
    path = placed[0].url.removeprefix(gateway.settings.public_base_url)
    await callback.start(path)
    greeting = load_catalogue().text("voice.verify_greeting", Language.ru)
    assert not CODE.search(callback.text) and callback.text == greeting
    # What the code is for, a way out for whoever did not ask, and which key to press.
    assert "для восстановления доступа" in greeting and "нажмите 1" in greeting
    assert "Если вы не просили код, положите трубку" in greeting
    assert "любую клавишу" not in greeting
    await callback.press("1")
    spoken = callback.text
    assert "Ваш код" in spoken
    digits = {
        "ноль": "0",
        "один": "1",
        "два": "2",
        "три": "3",
        "четыре": "4",
        "пять": "5",
        "шесть": "6",
        "семь": "7",
        "восемь": "8",
        "девять": "9",
    }
    words = spoken.split("Ваш код: ", 1)[1].split(".")[0].split(", ")
    code = "".join(digits[w] for w in words)
    assert len(code) == 6
    await callback.press("*")  # repeat: the same code again
    assert callback.text == spoken
    await callback.press(code)
    password = await spoken_password(callback)
    assert len(password) == gateway.settings.temp_password_length
    # No mobile on file: nothing to send the password to, and the caller is not told otherwise.
    assert gateway.messenger.to(LANDLINE) == []
    assert load_catalogue().text("voice.also_sent_sms", Language.ru) not in callback.text
    assert await check_password(gateway, LANDLINE_ONLY, password) == (True, True)


async def test_an_opted_out_mobile_is_not_told_the_password_was_texted(gateway: Gateway) -> None:
    """After a STOP (a spoofed one, say) the password SMS is withheld: the call must not claim
    it was sent, and the §6.8 notice still reaches the phone (§4)."""
    assert await Phone(gateway.twilio, MOBILE).text("СТОП") != []
    call = gateway.call(caller="+79990001122")
    await reach_method_choice(call, MOBILE_ONLY)
    await call.press("2")
    await call.hang_up()
    [placed] = gateway.messenger.to(MOBILE, "call")
    callback = Call(gateway.twilio, caller="+78005550100", called=MOBILE)
    await callback.start(placed.url.removeprefix(gateway.settings.public_base_url))
    await callback.press("5")
    words = callback.text.split("Ваш код: ", 1)[1].split(".")[0].split(", ")
    names = load_catalogue().words("spelling.digits", Language.ru)
    await callback.press("".join(str(names.index(word)) for word in words))
    password = await spoken_password(callback)
    assert len(password) == gateway.settings.temp_password_length
    assert load_catalogue().text("voice.also_sent_sms", Language.ru) not in callback.text
    texts = gateway.messenger.to(MOBILE)
    assert [m.purpose for m in texts] == ["notice"]
    assert password not in texts[0].body


async def test_recovery_notifies_other_contacts(gateway: Gateway) -> None:
    call = gateway.call()
    await reach_method_choice(call, TWO_MOBILES_EMAIL)
    await call.press("1")
    first_mobile = "+79037771230"
    await call.press(last_code(gateway, first_mobile))
    assert "Готово" in call.text
    notices = gateway.messenger.to(SECOND_MOBILE)
    assert len(notices) == 1 and "Не вы? Звоните" in notices[0].body
    emails = await queued_emails(gateway.settings, "e.smirnova@example.ru")
    assert len(emails) == 1 and "горячую линию" in emails[0]


# The SQL directory's own credential rules (the cabinet's are tests/cabinet_reference/'s).
@SQL_ONLY
async def test_temporary_password_expires_and_is_single_use(gateway: Gateway) -> None:
    call = gateway.call()
    await reach_method_choice(call, MOBILE_ONLY)
    await call.press("1")
    await call.press(last_code(gateway, MOBILE))
    password = await spoken_password(call)

    engine = create_engine(gateway.settings.database_url)
    sessionmaker = create_sessionmaker(engine)
    async with transaction(sessionmaker) as session:
        directory = SqlAccountDirectory(session, gateway.settings)
        await directory.change_password(MOBILE_ONLY, password, "new-Long-password-2026")
    assert await check_password(gateway, MOBILE_ONLY, password) == (False, False)
    assert await check_password(gateway, MOBILE_ONLY, "new-Long-password-2026") == (True, False)

    # A second recovery, whose temporary password then expires unused.
    call = gateway.call()
    await reach_method_choice(call, MOBILE_ONLY)
    await call.press("1")
    await call.press(last_code(gateway, MOBILE))
    second = await spoken_password(call)
    from sqlalchemy import update

    from core.models import Credential
    from core.platform.clock import utcnow

    async with transaction(sessionmaker) as session:
        await session.execute(update(Credential).values(expires_at=utcnow() - timedelta(minutes=1)))
    await engine.dispose()
    assert await check_password(gateway, MOBILE_ONLY, second) == (False, False)


async def test_metrics_count_steps_without_numbers(gateway: Gateway) -> None:
    call = gateway.call()
    await reach_method_choice(call, MOBILE_ONLY)
    await call.press("1")
    await call.press(last_code(gateway, MOBILE))
    await gateway.call().start()
    text = (await gateway.twilio.http.get("/metrics")).text
    completed = re.search(
        r'gateway_recovery_events_total\{channel="voice",event="recovery.completed"\} (\d+)', text
    )
    assert completed and int(float(completed.group(1))) >= 1
    assert 'gateway_outbound_messages_total{channel="sms",purpose="code",result="sent"}' in text
    # Webhook latency by route template: the step number in the URL is not a label.
    assert re.search(r'gateway_webhook_seconds_count\{route="/ivr/step"\} [1-9]', text)
    assert 'route="/ivr/voice"' in text and "s=" not in text
    # No phone or account number (or code) in any sample.
    for line in text.splitlines():
        if not line.startswith("#"):
            assert not re.search(r"\d{6,}", line.split(" ")[0]), line


# A rollback of the request's SQL transaction (a cabinet's PUT is not part of it: §11).
@SQL_ONLY
async def test_a_crash_mid_recovery_rolls_everything_back(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(gateway.settings.database_url)
    sessionmaker = create_sessionmaker(engine)
    async with transaction(sessionmaker) as session:
        directory = SqlAccountDirectory(session, gateway.settings)
        old = await set_temporary_password(directory, gateway.settings, MOBILE_ONLY)
        await directory.change_password(MOBILE_ONLY, old, "the-old-Password-1")

    call = gateway.call()
    await reach_method_choice(call, MOBILE_ONLY)
    await call.press("1")
    code = last_code(gateway, MOBILE)

    class Crash(Exception):
        pass

    async def crash(*_: object, **__: object) -> None:
        raise Crash  # an unexpected bug after the password was issued

    monkeypatch.setattr(RecoveryService, "_notify_contacts", crash)
    await call.press(code)
    assert "техническая неполадка" in call.text and call.verbs()[-1] == "Dial"
    # The temporary password issued before the crash was rolled back with the rest.
    assert await check_password(gateway, MOBILE_ONLY, "the-old-Password-1") == (True, False)
    await engine.dispose()
