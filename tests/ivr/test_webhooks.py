"""Voice webhooks through the real app: signatures (§6.1), bad input (§6.10), replays (§6.6),
code rules (§5), enumeration (§6.2), codes only to phones on file (§6.3), the failure cap (§6.5),
provider errors and the end of a call."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import func, select

from core.accounts.passwords import hash_password
from core.models import Account, AuditEvent, Credential
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings, UnsafeSettingsError
from core.recovery.service import RecoveryService
from gateway.app import create_app
from ivr.menu import MENU, State, successors
from ivr.screens import spoken_number
from ivr.session import CallStore
from tests.conftest import (
    AUTH_TOKEN,
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    PUBLIC_BASE_URL,
    TWO_MOBILES_EMAIL,
    UNKNOWN,
    Gateway,
)
from tests.support.fakes import RecordingMessenger
from tests.support.twilio_driver import Call, sign
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()
# The hotline number of the tests' settings (the default): the code call comes from it.
HOTLINE = Settings(_env_file=None).hotline_number
CODE = re.compile(r"\b(\d{6})\b")
HOST_BASE_URL = "http://gateway.internal"
SIGNATURE = "X-Twilio-Signature"
STRANGER = "+79990001122"  # a mobile that is on no account
OLD_PASSWORD = "Old-long-password-2024"

TWILIO_PATHS = [
    "/ivr/voice",
    "/ivr/step?s=0",
    "/ivr/verify?a=x",
    "/ivr/whisper",
    "/ivr/dial-result",
    "/ivr/status",
    "/ivr/queue-wait",
    "/ivr/queue-result",
    "/ivr/queue-connect",
    "/ivr/operator-desk",
]
FORGERIES = ["missing", "wrong", "other_token", "host_url", "tampered"]


def ru(key: str, **params: object) -> str:
    """A Russian sentence from the catalogue (the code call's promise names the hotline's
    number, the one the tests' settings keep)."""
    if key == "voice.call_arranged":
        params.setdefault("number", spoken_number(HOTLINE, PROMPTS, Language.ru))
    return PROMPTS.text(key, Language.ru, **params)


def first_sentence(key: str) -> str:
    return ru(key).split(". ")[0]


# -- helpers ------------------------------------------------------------------------------


def form(call: Call, **extra: str) -> dict[str, str]:
    """The fields Twilio posts for a call, with an answer."""
    return {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "CallSid": call.call_sid,
        "CallStatus": "in-progress",
        "Direction": "inbound",
        "From": call.caller,
        "To": call.called,
        **extra,
    }


def forged_headers(kind: str, path: str, params: dict[str, str]) -> dict[str, str]:
    """X-Twilio-Signature headers that must all be refused."""
    public = PUBLIC_BASE_URL + path
    match kind:
        case "missing":
            return {}
        case "wrong":
            return {SIGNATURE: "bm90LWEtc2lnbmF0dXJlLWF0LWFsbA=="}
        case "other_token":
            return {SIGNATURE: sign("another-accounts-auth-token-9876", public, params)}
        case "host_url":
            # What a gateway that trusts the Host header would compute.
            return {SIGNATURE: sign(AUTH_TOKEN, HOST_BASE_URL + path, params)}
        case "tampered":
            return {SIGNATURE: sign(AUTH_TOKEN, public, {**params, "Digits": "2"})}
    raise AssertionError(kind)


async def post_raw(
    gateway: Gateway,
    path: str,
    *,
    data: Mapping[str, str] | None = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Response:
    return await gateway.twilio.http.post(
        path, data=data, content=content, headers=dict(headers or {})
    )


def action_of(call: Call) -> str:
    """Where the current Gather posts, as a path."""
    action = call.gather.get("action")
    assert action and "s=" in action, action
    return urljoin(call.path, action)


async def answer_at(call: Call, path: str, **answer: str) -> httpx.Response:
    """Post one signed answer to a given step URL (a replay when that step was answered)."""
    response = await call.twilio.post(path, form(call, **answer))
    assert response.status_code == 200, (response.status_code, response.text)
    return response


def says(body: str) -> str:
    return " ".join("".join(say.itertext()) for say in ET.fromstring(body).iter("Say"))


def text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def snapshot(redis: Redis) -> dict[str, object]:
    """Every Redis key with its value, to prove a request changed nothing."""
    state: dict[str, object] = {}
    for key in sorted(text(k) for k in await redis.keys("*")):
        kind = text(await redis.type(key))
        if kind == "string":
            # Serialised, not decoded: a subject's rate-limit log is packed binary.
            state[key] = await redis.dump(key)
        elif kind == "hash":
            state[key] = await redis.hgetall(key)
        else:
            state[key] = kind
    return state


async def audit_events(settings: Settings) -> list[tuple[str, dict[str, object]]]:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            rows = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
            return [(row.event, json.loads(row.detail)) for row in rows]
    finally:
        await engine.dispose()


async def audit_count(settings: Settings) -> int:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            return int(await session.scalar(select(func.count(AuditEvent.id))) or 0)
    finally:
        await engine.dispose()


def last_code(gateway: Gateway, phone: str = MOBILE) -> str:
    sms = gateway.messenger.to(phone)
    assert sms, f"no SMS to {phone}"
    match = CODE.search(sms[-1].body)
    assert match, "no code in the SMS"
    return match.group(1)


SPOKEN_CODE = re.compile(r"Ваш код: ([а-яё, ]+)\.")


def spoken_digits(words: str) -> str:
    """The digits of a code as the call reads it ("один, два, …")."""
    names = PROMPTS.words("spelling.digits", Language.ru)
    return "".join(str(names.index(word)) for word in words.split(", "))


def other_code(code: str) -> str:
    return f"{(int(code) + 1) % 10**6:06d}"


async def at_main_menu(gateway: Gateway, caller: str = MOBILE) -> Call:
    call = gateway.call(caller)
    await call.start()
    assert ru("voice.main_menu") in call.text
    return call


async def at_account_entry(gateway: Gateway, caller: str = MOBILE) -> Call:
    call = await at_main_menu(gateway, caller)
    await call.press("1")
    assert ru("voice.account_entry") in call.text
    return call


async def at_account_confirm(
    gateway: Gateway, account: str = MOBILE_ONLY, caller: str = MOBILE
) -> Call:
    call = await at_account_entry(gateway, caller)
    await call.press(account + "#")
    assert PROMPTS.digits(account, Language.ru) in call.text
    return call


async def at_method_choice(
    gateway: Gateway, account: str = MOBILE_ONLY, caller: str = MOBILE
) -> Call:
    call = await at_account_confirm(gateway, account, caller)
    await call.press("1")
    assert ru("voice.method_choice") in call.text
    return call


async def at_code_entry(gateway: Gateway, account: str = MOBILE_ONLY, caller: str = MOBILE) -> Call:
    call = await at_method_choice(gateway, account, caller)
    await call.press("1")
    assert ru("voice.code_entry") in call.text
    return call


async def at_secret_ready(gateway: Gateway) -> Call:
    call = await at_code_entry(gateway)
    await call.press(last_code(gateway))
    assert ru("voice.secret_repeat") in call.text and "Первая группа" in call.text
    return call


async def at_verify_greeting(
    gateway: Gateway, account: str = LANDLINE_ONLY, phone: str = LANDLINE
) -> Call:
    call = await at_method_choice(gateway, account, caller=phone)
    await call.press("2")
    await call.hang_up()  # the code call is placed once the caller has hung up
    placed = gateway.messenger.to(phone, "call")
    assert placed, "no verification call placed"
    callback = Call(gateway.twilio, caller=gateway.settings.hotline_number, called=phone)
    await callback.start(placed[-1].url.removeprefix(gateway.settings.public_base_url))
    assert ru("voice.verify_greeting") in callback.text
    return callback


async def at_verify_code(gateway: Gateway) -> Call:
    callback = await at_verify_greeting(gateway)
    await callback.press("5")
    assert "Ваш код" in callback.text
    return callback


DRIVERS: dict[State, Callable[[Gateway], Awaitable[Call]]] = {
    State.main_menu: at_main_menu,
    State.account_entry: at_account_entry,
    State.account_confirm: at_account_confirm,
    State.method_choice: at_method_choice,
    State.code_entry: at_code_entry,
    State.secret_ready: at_secret_ready,
    State.verify_greeting: at_verify_greeting,
    State.verify_code: at_verify_code,
}


def assert_operator_dial(call: Call, gateway: Gateway) -> str:
    """The document transfers to the operator with a whisper; returns the whisper path."""
    assert call.verbs()[-1] == "Dial", call.verbs()
    number = call.twiml.find("Dial/Number")
    assert number is not None and number.text == gateway.settings.operator_number
    url = call.dial_whisper_url()
    assert "/ivr/whisper" in url
    return url


async def fetch_whisper(gateway: Gateway, call: Call) -> str:
    """What the operator hears, fetched as Twilio does for the operator's leg."""
    url = urljoin(call.path, assert_operator_dial(call, gateway))
    operator_leg = {
        "AccountSid": "AC" + "0" * 32,
        "CallSid": "CA" + "f" * 32,
        "CallStatus": "in-progress",
        "Direction": "outbound-dial",
        "To": gateway.settings.operator_number,
    }
    response = await gateway.twilio.post(url, operator_leg)
    assert response.status_code == 200, response.text
    return says(response.text)


def assert_account_not_disclosed(text: str, account: str) -> None:
    assert account not in text
    assert PROMPTS.digits(account, Language.ru) not in text
    assert PROMPTS.digits(account[:-3], Language.ru) not in text


async def expire_codes(redis: Redis, expected: int | None = None) -> None:
    """Let every code's lifetime end (each attempt's hash keeps it with its expiry, `e`)."""
    attempts = [key for key in await redis.keys("attempt:*") if await redis.hexists(key, "h")]
    if expected is not None:
        assert len(attempts) == expected
    for key in attempts:
        await redis.hset(key, "e", 0)


async def end_cool_downs(redis: Redis) -> None:
    """Let every resend cool-down end (fields `k<method>` of the attempt's hash)."""
    for key in await redis.keys("attempt:*"):
        fields = [name for name in map(text, await redis.hkeys(key)) if name.startswith("k")]
        if fields:
            await redis.hdel(key, *fields)


def session_key(call: Call) -> str:
    return f"call:{call.call_sid}"


# -- §6.1 signatures ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", FORGERIES)
@pytest.mark.parametrize("path", TWILIO_PATHS)
async def test_forged_signature_is_refused(gateway: Gateway, path: str, kind: str) -> None:
    params = form(gateway.call(), Digits="1", CallStatus="completed")
    response = await post_raw(
        gateway, path, data=params, headers=forged_headers(kind, path, params)
    )
    assert response.status_code == 403, response.text


@pytest.mark.parametrize("path", TWILIO_PATHS)
async def test_correct_signature_is_accepted(gateway: Gateway, path: str) -> None:
    """The same requests, correctly signed, get past the check (so the 403s above mean it)."""
    call = gateway.call()
    response = await gateway.twilio.post(path, form(call, Digits="1"))
    assert response.status_code in (200, 204), (path, response.status_code, response.text)


@pytest.mark.parametrize("kind", FORGERIES)
async def test_forged_step_changes_nothing(gateway: Gateway, redis: Redis, kind: str) -> None:
    call = await at_method_choice(gateway)
    path = action_of(call)
    params = form(call, Digits="1")
    before = await snapshot(redis)
    sent = list(gateway.messenger.sent)
    audits = await audit_count(gateway.settings)

    response = await post_raw(
        gateway, path, data=params, headers=forged_headers(kind, path, params)
    )
    assert response.status_code == 403
    assert await snapshot(redis) == before
    assert gateway.messenger.sent == sent
    assert await audit_count(gateway.settings) == audits

    # The genuine request at the same step still works, and does change all three.
    await call.press("1")
    assert ru("voice.code_sent") in call.text
    assert len(gateway.messenger.to(MOBILE)) == 1
    assert await snapshot(redis) != before
    assert await audit_count(gateway.settings) > audits


async def test_signature_covers_the_query_string(gateway: Gateway) -> None:
    call = await at_account_entry(gateway)
    path = action_of(call)
    assert "?s=" in path
    params = form(call, Digits="0")
    bare = path.split("?")[0]
    wrong_query = {SIGNATURE: sign(AUTH_TOKEN, PUBLIC_BASE_URL + bare, params)}
    refused = await post_raw(gateway, path, data=params, headers=wrong_query)
    assert refused.status_code == 403
    right = {SIGNATURE: sign(AUTH_TOKEN, PUBLIC_BASE_URL + path, params)}
    accepted = await post_raw(gateway, path, data=params, headers=right)
    assert accepted.status_code == 200
    assert ET.fromstring(accepted.text).find("Dial") is not None


@pytest.fixture
async def unsigned_app(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """A second app on the same database and Redis with the development flag on."""
    settings = gateway.settings.model_copy(update={"dev_disable_signature_check": True})
    app = create_app(settings, messenger=RecordingMessenger())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=HOST_BASE_URL) as http:
            yield http


async def test_development_flag_lets_unsigned_requests_through(
    gateway: Gateway, unsigned_app: httpx.AsyncClient
) -> None:
    params = form(gateway.call())
    assert (await unsigned_app.post("/ivr/voice", data=params)).status_code == 200
    # The same request to the default app is refused.
    assert (await post_raw(gateway, "/ivr/voice", data=params)).status_code == 403


def test_signature_check_is_on_by_default() -> None:
    settings = Settings(_env_file=None)
    assert settings.dev_disable_signature_check is False
    assert settings.signature_check_enabled


SAFE_PRODUCTION: dict[str, object] = {
    "environment": "production",
    "twilio_account_sid": "AC" + "5e" * 16,
    "twilio_auth_token": "tok-" + "7f3a9c" * 6,
    "secret_key": "key-" + "b81e4d" * 8,
    "redis_url": "redis://redis.internal:6379/0",
    "public_base_url": PUBLIC_BASE_URL,
    "metrics_token": "mtr-" + "5c2e8a" * 6,
}


def production(**overrides: object) -> Settings:
    # Values of several types by name, as the environment would give them.
    values: dict[str, Any] = {**SAFE_PRODUCTION, **overrides}
    return Settings(_env_file=None, **values)


def test_safe_production_settings_start() -> None:
    assert production().signature_check_enabled


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dev_disable_signature_check": True}, "GATEWAY_DEV_DISABLE_SIGNATURE_CHECK"),
        ({"twilio_auth_token": "changeme"}, "GATEWAY_TWILIO_AUTH_TOKEN"),
        ({"twilio_account_sid": "AC-not-configured"}, "GATEWAY_TWILIO_ACCOUNT_SID"),
        ({"twilio_auth_token": "development-only-auth-token"}, "GATEWAY_TWILIO_AUTH_TOKEN"),
        ({"secret_key": "secret"}, "GATEWAY_SECRET_KEY"),
        ({"secret_key": "development-only-secret-key-do-not-use-in-production"}, "SECRET_KEY"),
    ],
)
def test_unsafe_production_settings_are_refused_with_a_clear_message(
    overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(UnsafeSettingsError, match=message) as refused:
        production(**overrides)
    assert "production" in str(refused.value)


def test_unsafe_production_settings_raise_unsafe_settings_error() -> None:
    with pytest.raises(UnsafeSettingsError):
        production(dev_disable_signature_check=True)


def test_refusal_message_does_not_quote_secrets() -> None:
    secret = "zq" + "9X7w" * 10
    token = "tk" + "4Pm2" * 10
    with pytest.raises(UnsafeSettingsError) as refused:
        production(dev_disable_signature_check=True, twilio_auth_token=token, secret_key=secret)
    message = str(refused.value)
    for value in (secret, token):
        for start in range(len(value) - 8):
            assert value[start : start + 8] not in message, "a secret leaks into the message"


# -- §6.10 bad input ----------------------------------------------------------------------


async def test_non_utf8_body_is_400(gateway: Gateway) -> None:
    headers = {"content-type": "application/x-www-form-urlencoded"}
    for body in (b"CallSid=CA\xff\xfe&Digits=1", b"CallSid=CA%FF%FE&Digits=1"):
        response = await post_raw(gateway, "/ivr/voice", content=body, headers=headers)
        assert response.status_code == 400, (body, response.status_code)


async def test_json_body_is_415(gateway: Gateway) -> None:
    response = await gateway.twilio.http.post("/ivr/voice", json={"CallSid": "CA" + "1" * 32})
    assert response.status_code == 415


async def test_huge_body_is_413(gateway: Gateway) -> None:
    body = b"CallSid=CA1&Pad=" + b"x" * (64 * 1024)
    headers = {"content-type": "application/x-www-form-urlencoded"}
    response = await post_raw(gateway, "/ivr/voice", content=body, headers=headers)
    assert response.status_code == 413

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"x" * 1024

    # Without a Content-Length the reader still stops at the limit.
    streamed = await gateway.twilio.http.post("/ivr/voice", content=chunks(), headers=headers)
    assert streamed.status_code == 413


async def test_too_many_fields_is_400(gateway: Gateway) -> None:
    params = {f"F{i}": "x" for i in range(300)}
    response = await gateway.twilio.post("/ivr/voice", {**form(gateway.call()), **params})
    assert response.status_code == 400


@pytest.mark.parametrize(
    "path", ["/ivr/voice", "/ivr/step?s=0", "/ivr/verify?a=x", "/ivr/status", "/ivr/queue-connect"]
)
@pytest.mark.parametrize("call_sid", [None, "", "not-a-call-sid", "CA" + "1" * 80])
async def test_missing_or_bad_call_sid_is_400(
    gateway: Gateway, path: str, call_sid: str | None
) -> None:
    params = form(gateway.call())
    if call_sid is None:
        del params["CallSid"]
    else:
        params["CallSid"] = call_sid
    response = await gateway.twilio.post(path, params)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    "query", ["s=abc", "s=-1", "", "s=99999999999999999999999", "s=%D9%A3", "s=+1"]
)
async def test_bad_step_number_is_4xx_or_a_safe_reply(
    gateway: Gateway, redis: Redis, query: str
) -> None:
    call = await at_main_menu(gateway)
    before = await redis.hgetall(session_key(call))
    response = await gateway.twilio.post(f"/ivr/step?{query}", form(call, Digits="1"))
    if response.status_code == 200:
        # An apology, or the current prompt again: well-formed, and nothing acted upon.
        text = says(response.text)
        assert ru("voice.error_apology") in text or ru("voice.main_menu") in text
    else:
        assert 400 <= response.status_code < 500, response.status_code
    assert await redis.hgetall(session_key(call)) == before
    assert gateway.messenger.sent == []


async def test_step_for_an_unknown_call_is_an_apology(gateway: Gateway) -> None:
    call = gateway.call()
    response = await answer_at(call, "/ivr/step?s=0", Digits="1")
    assert ru("voice.error_apology") in says(response.text)
    assert ET.fromstring(response.text).find("Dial/Number") is not None


BAD_ANSWERS: list[dict[str, str]] = [
    {"Digits": "<Say>&amp;</Say>"},
    {"Digits": "]]>"},
    {"Digits": "\"'"},
    {"Digits": "12ab"},
    {"Digits": "1" * 500},
    {"Digits": "💥"},
    {"SpeechResult": "<Say>&amp;</Say>"},
    {"SpeechResult": "]]> <!-- \"' &"},
    {"SpeechResult": "😀😀😀"},
    {"SpeechResult": "один два три" * 40},
    {"Digits": "", "SpeechResult": "", "Unknown": "<x/>", "Extra&": "]]>"},
]
BAD_IDS = [
    "say-tag",
    "cdata-end",
    "quotes",
    "12ab",
    "500-digits",
    "emoji-digits",
    "say-speech",
    "cdata-speech",
    "emoji-speech",
    "long-speech",
    "unknown-params",
]


@pytest.mark.parametrize("answer", BAD_ANSWERS, ids=BAD_IDS)
async def test_bad_account_entry_reprompts_then_transfers(
    gateway: Gateway, answer: dict[str, str]
) -> None:
    call = await at_account_entry(gateway)
    tries = gateway.settings.menu_max_tries
    for attempt in range(1, tries + 1):
        await call._answer(**answer)  # the driver asserts 200 + well-formed TwiML
        for value in answer.values():
            if len(value) > 3:
                assert value not in ET.tostring(call.twiml, encoding="unicode")
        if attempt < tries:
            # A short re-prompt (§3): "не бывает" only for keys, never for speech not understood.
            assert ru("voice.account_entry_short") in call.text, call.text
            assert ru("voice.account_entry") not in call.text
            notice = "voice.speech_unclear" if "SpeechResult" in answer else "voice.account_invalid"
            if answer.get("SpeechResult") or answer.get("Digits"):
                assert ru(notice) in call.text, call.text
            assert call.gather.get("input") == "dtmf speech"
    assert ru("voice.too_many_tries") in call.text
    whisper = await fetch_whisper(gateway, call)
    assert ru("whisper.reason_retries_exhausted") in whisper


@pytest.mark.parametrize("answer", BAD_ANSWERS[:6], ids=BAD_IDS[:6])
async def test_bad_key_in_the_main_menu_reprompts(gateway: Gateway, answer: dict[str, str]) -> None:
    call = await at_main_menu(gateway)
    await call._answer(**answer)
    assert ru("voice.invalid_key") in call.text
    # The short menu, never the greeting again (§3).
    assert ru("voice.main_menu_short") in call.text and call.gather is not None
    assert ru("voice.main_menu") not in call.text


async def test_silence_in_account_entry_ends_with_the_operator(gateway: Gateway) -> None:
    call = await at_account_entry(gateway)
    for _ in range(gateway.settings.menu_max_tries - 1):
        await call.silence()
        assert ru("voice.no_input") in call.text and ru("voice.account_entry_short") in call.text
    await call.silence()
    whisper = await fetch_whisper(gateway, call)
    assert ru("whisper.reason_retries_exhausted") in whisper
    assert ru("whisper.no_account") in whisper


async def test_whisper_after_retries_masks_the_account(gateway: Gateway) -> None:
    call = await at_account_confirm(gateway)
    for _ in range(gateway.settings.menu_max_tries):
        await call.press("7")
    whisper = await fetch_whisper(gateway, call)
    assert ru("whisper.reason_retries_exhausted") in whisper
    assert PROMPTS.digits(MOBILE_ONLY[-3:], Language.ru) in whisper
    assert_account_not_disclosed(whisper, MOBILE_ONLY)


# -- any menu: 0 and * --------------------------------------------------------------------


@pytest.mark.parametrize("state", list(DRIVERS))
async def test_zero_reaches_the_operator_from_every_menu(gateway: Gateway, state: State) -> None:
    call = await DRIVERS[state](gateway)
    if state is State.code_entry:
        # Digits belong to the code: `*` opens the options, `0` among them (§3).
        await call.press("*")
    await call.press("0")
    assert ru("voice.operator_transfer") in call.text
    whisper = await fetch_whisper(gateway, call)
    assert ru("whisper.reason_caller_request") in whisper


@pytest.mark.parametrize(
    "state",
    [s for s in DRIVERS if s not in (State.code_entry, State.verify_greeting)],
)
async def test_star_repeats_the_prompt(gateway: Gateway, state: State) -> None:
    call = await DRIVERS[state](gateway)
    before = call.text
    sent = len(gateway.messenger.sent)
    await call.press("*")
    after = call.text
    if state is State.secret_ready:
        # The repeat says again that the secret also went by SMS.
        assert ru("voice.also_sent_sms") in before
    assert after == before
    assert ru(MENU[state].prompt).split(":")[0][:40] in after
    await call.press("*")
    assert call.text == after
    assert len(gateway.messenger.sent) == sent


async def test_speaking_operator_reaches_the_operator(gateway: Gateway) -> None:
    call = await at_account_entry(gateway)
    await call.say("оператор")
    assert_operator_dial(call, gateway)


# -- §6.6 replays -------------------------------------------------------------------------


async def test_retried_first_webhook_answers_the_same(gateway: Gateway, redis: Redis) -> None:
    call = gateway.call()
    first = await gateway.twilio.post("/ivr/voice", form(call))
    again = await gateway.twilio.post("/ivr/voice", form(call))
    assert first.status_code == again.status_code == 200
    assert first.text == again.text
    assert await redis.keys("call:*") == [session_key(call)]


async def test_replayed_step_sends_one_code(gateway: Gateway) -> None:
    call = await at_method_choice(gateway)
    path = action_of(call)
    first = await answer_at(call, path, Digits="1")
    second = await answer_at(call, path, Digits="1")
    assert ru("voice.code_sent") in says(first.text)
    assert says(second.text) == says(first.text)
    assert len(gateway.messenger.to(MOBILE)) == 1


async def test_replayed_wrong_code_does_not_eat_a_try(gateway: Gateway) -> None:
    call = await at_code_entry(gateway)
    code = last_code(gateway)
    path = action_of(call)
    await call.press(other_code(code))
    assert ru("voice.code_wrong") in call.text
    for _ in range(5):
        replay = await answer_at(call, path, Digits=other_code(code))
        assert says(replay.text) == call.text
    await call.press(code)
    assert "Первая группа" in call.text, call.text
    assert len(gateway.messenger.to(MOBILE)) == 2  # the code, then the password


async def test_a_different_answer_to_an_answered_step_is_ignored(gateway: Gateway) -> None:
    """A replay with other digits neither acts nor moves the call on."""
    call = await at_method_choice(gateway)
    path = action_of(call)
    await call.press("1")
    text = call.text
    replay = await answer_at(call, path, Digits="0")
    assert says(replay.text) == text
    assert ET.fromstring(replay.text).find("Dial") is None


# -- §5 code rules through the flow -------------------------------------------------------


async def test_three_wrong_codes_go_to_the_operator(gateway: Gateway) -> None:
    call = await at_code_entry(gateway)
    wrong = other_code(last_code(gateway))
    for _ in range(gateway.settings.menu_max_tries - 1):
        await call.press(wrong)
        assert ru("voice.code_wrong") in call.text and call.gather is not None
    await call.press(wrong)
    assert ru("voice.too_many_tries") in call.text
    whisper = await fetch_whisper(gateway, call)
    assert ru("whisper.code_sent") in whisper
    assert ru("whisper.reason_retries_exhausted") in whisper
    assert_account_not_disclosed(whisper, MOBILE_ONLY)


async def test_malformed_code_reprompts(gateway: Gateway) -> None:
    call = await at_code_entry(gateway)
    await call.press("12345")
    assert ru("voice.code_malformed") in call.text and call.gather is not None


async def test_expired_code_is_no_longer_valid(gateway: Gateway, redis: Redis) -> None:
    call = await at_code_entry(gateway)
    code = last_code(gateway)
    await expire_codes(redis, expected=1)
    await call.press(code)
    assert ru("voice.code_expired") in call.text
    assert "группа" not in call.text and "Готово" not in call.text
    assert len(gateway.messenger.to(MOBILE)) == 1  # no password was sent


async def test_resend_respects_the_cool_down(gateway: Gateway) -> None:
    call = await at_code_entry(gateway)
    await call.press("*")
    await call.press("1")
    # The wait is said in seconds, and the call goes back to the code (the SMS may yet come).
    seconds = gateway.settings.code_resend_cooldown_seconds
    said = [
        ru("voice.code_resend_wait", seconds=PROMPTS.seconds(left, Language.ru))
        for left in range(1, seconds + 1)
    ]
    assert any(text in call.text for text in said), call.text
    assert "минут" not in call.text
    assert ru("voice.code_entry_short") in call.text or ru("voice.code_entry") in call.text
    assert len(gateway.messenger.to(MOBILE)) == 1
    await call.press("*")
    await call.press("1")
    assert any(text in call.text for text in said), call.text
    assert len(gateway.messenger.to(MOBILE)) == 1


async def test_resend_after_the_cool_down_sends_a_new_code(gateway: Gateway, redis: Redis) -> None:
    call = await at_code_entry(gateway)
    first = last_code(gateway)
    await end_cool_downs(redis)  # the cool-down has passed
    await call.press("*")
    await call.press("1")
    assert ru("voice.code_resent") in call.text
    assert len(gateway.messenger.to(MOBILE)) == 2
    second = last_code(gateway)
    if second != first:
        await call.press(first)
        assert ru("voice.code_wrong") in call.text  # the old code was replaced
    await call.press(second)
    assert "Первая группа" in call.text


# -- §6.2 enumeration ---------------------------------------------------------------------


async def spoken_path(gateway: Gateway, account: str, method: str) -> list[str]:
    """Everything said from the main menu through the code prompt (or the call-back promise)."""
    call = await at_main_menu(gateway, caller=STRANGER)
    await call.press("1")
    await call.press(account + "#")
    await call.press("1")
    await call.press(method)
    if method == "1":
        sms = gateway.messenger.to(MOBILE)
        wrong = other_code(last_code(gateway)) if sms else "000000"
        await call.press(wrong)
        await call.press("*")
    else:
        await call.hang_up()  # the code call is placed once the caller has hung up
    spoken = PROMPTS.digits(account, Language.ru)
    assert any(spoken in text for text in call.history)
    return [text.replace(spoken, "<account>") for text in call.history]


@pytest.mark.parametrize("method", ["1", "2"])
async def test_known_and_unknown_accounts_sound_the_same(gateway: Gateway, method: str) -> None:
    known = await spoken_path(gateway, MOBILE_ONLY, method)
    landline = await spoken_path(gateway, LANDLINE_ONLY, method)
    unknown = await spoken_path(gateway, UNKNOWN, method)
    assert known == landline == unknown
    assert len(known) == (7 if method == "1" else 5)
    if method == "1":
        assert ru("voice.code_sent") in known[4] and ru("voice.code_entry") in known[4]
        assert ru("voice.code_wrong") in known[5]
    else:
        assert ru("voice.call_arranged") in known[-1]
    # The only difference is what went out: one message, to the mobile on file.
    channel = "sms" if method == "1" else "call"
    assert len(gateway.messenger.to(MOBILE, channel)) == 1
    assert gateway.messenger.to(STRANGER, channel) == []


# -- §6.3 codes only to phones on file ----------------------------------------------------


async def test_code_goes_to_the_phone_on_file_not_the_caller(gateway: Gateway) -> None:
    call = await at_code_entry(gateway, MOBILE_ONLY, caller=STRANGER)
    assert ru("voice.code_sent") in call.text
    assert gateway.messenger.to(STRANGER) == []
    assert gateway.messenger.to(STRANGER, "call") == []
    assert len(gateway.messenger.to(MOBILE)) == 1


@pytest.mark.parametrize("method", ["1", "2"])
async def test_unknown_account_sends_nothing_to_the_caller(gateway: Gateway, method: str) -> None:
    call = await at_method_choice(gateway, UNKNOWN, caller=STRANGER)
    await call.press(method)
    assert ru("voice.code_sent" if method == "1" else "voice.call_arranged") in call.text
    await call.hang_up()
    assert gateway.messenger.sent == []


async def test_voice_code_calls_the_phone_on_file_not_the_caller(gateway: Gateway) -> None:
    call = await at_method_choice(gateway, LANDLINE_ONLY, caller=STRANGER)
    await call.press("2")
    await call.hang_up()
    assert [item.to for item in gateway.messenger.sent] == [LANDLINE]


# -- §6.5 the daily failure cap -----------------------------------------------------------


async def set_password(settings: Settings, account: str, password: str) -> None:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            row = await session.scalar(select(Account).where(Account.account_number == account))
            assert row is not None
            row.credential = Credential(password_hash=hash_password(password))
    finally:
        await engine.dispose()


async def credential_state(settings: Settings, account: str) -> tuple[object, ...]:
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            row = await session.scalar(
                select(Credential)
                .join(Account, Credential.account_id == Account.id)
                .where(Account.account_number == account)
            )
            assert row is not None
            return (
                row.password_hash,
                row.is_temporary,
                row.expires_at,
                row.used_at,
                row.changed_at,
            )
    finally:
        await engine.dispose()


async def test_failed_verifications_are_capped_per_account(gateway: Gateway, redis: Redis) -> None:
    settings = gateway.settings
    await set_password(settings, MOBILE_ONLY, OLD_PASSWORD)
    original = await credential_state(settings, MOBILE_ONLY)
    cap = settings.failed_verifications_per_day
    failures = 0
    while failures < cap:
        call = await at_code_entry(gateway)
        wrong = other_code(last_code(gateway))
        while failures < cap:
            await call.press(wrong)
            failures += 1
            assert await credential_state(settings, MOBILE_ONLY) == original
            if call.twiml.find("Gather") is None:
                break
    assert ru("voice.verification_capped") in call.text
    assert_operator_dial(call, gateway)
    assert ru("whisper.reason_verification_capped") in await fetch_whisper(gateway, call)

    # The counter lives at most a day.
    counters = await redis.keys("fails:*")
    assert len(counters) == 1
    assert 0 < await redis.ttl(counters[0]) <= 24 * 3600

    # The next attempt, by SMS or by call, goes to the operator and sends nothing.
    sent = len(gateway.messenger.sent)
    for method in ("1", "2"):
        call = await at_method_choice(gateway)
        await call.press(method)
        assert ru("voice.verification_capped") in call.text
        assert_operator_dial(call, gateway)
    assert len(gateway.messenger.sent) == sent
    assert await credential_state(settings, MOBILE_ONLY) == original

    # Other accounts are not affected.
    call = await at_code_entry(gateway, TWO_MOBILES_EMAIL)
    assert ru("voice.code_sent") in call.text


# -- provider errors ----------------------------------------------------------------------


async def test_provider_failure_is_recorded_and_the_call_is_offered_as_always(
    gateway: Gateway,
) -> None:
    call = await at_method_choice(gateway)
    gateway.messenger.fail = True
    await call.press("1")  # queued: the answer does not wait for the provider
    assert ru("voice.code_sent") in call.text
    # The send failed after the response: recorded; the next prompt is the one everybody gets
    # (its offer of the call is for everyone: a bounce must not tell the account exists, §4).
    events = await audit_events(gateway.settings)
    assert [e for e, _ in events] == ["recovery.started", "code.sent_sms", "code.undelivered"]
    await call.press("12")
    assert ru("voice.code_malformed") in call.text and ru("voice.code_entry_short") in call.text
    gateway.messenger.fail = False
    await call.press("*")
    await call.press("2")
    assert call.verbs()[-1] == "Hangup"
    await call.hang_up()
    assert len(gateway.messenger.to(MOBILE, "call")) == 1


async def test_the_call_back_is_not_held_up_by_the_sms_cool_down(gateway: Gateway) -> None:
    call = await at_method_choice(gateway)
    await call.press("1")
    # The SMS may be blocked by the operator (§10): switching to a call works at once.
    await call.press("*")
    await call.press("2")
    assert call.verbs()[-1] == "Hangup"
    await call.hang_up()
    assert len(gateway.messenger.to(LANDLINE, "call") + gateway.messenger.to(MOBILE, "call")) == 1


async def test_whisper_after_a_failure_still_names_the_case(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    call = await at_method_choice(gateway)

    async def crash(*_: object, **__: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(RecoveryService, "send_sms_code", crash)
    await call.press("1")
    assert ru("voice.error_apology") in call.text
    assert_operator_dial(call, gateway)
    assert call.call_sid in call.dial_whisper_url()
    whisper = await fetch_whisper(gateway, call)
    assert PROMPTS.digits(MOBILE_ONLY[-3:], Language.ru) in whisper
    assert ru("whisper.reason_error") in whisper


async def test_dial_result_when_nobody_answers(gateway: Gateway) -> None:
    call = await at_main_menu(gateway)
    await call.press("0")
    number = call.twiml.find("Dial")
    assert number is not None
    action = number.get("action")
    assert action
    response = await gateway.twilio.post(action, form(call, DialCallStatus="no-answer"))
    assert response.status_code == 200
    document = ET.fromstring(response.text)
    # Nobody answered: a callback request is offered (tests/ivr/test_transfers.py goes on).
    assert ru("voice.callback_offer") in says(response.text)
    assert [child.tag for child in document] == ["Gather"]
    answered = await gateway.twilio.post(action, form(call, DialCallStatus="completed"))
    assert [child.tag for child in ET.fromstring(answered.text)] == ["Hangup"]


# -- the end of a call --------------------------------------------------------------------


async def test_completed_status_deletes_the_call_state(gateway: Gateway, redis: Redis) -> None:
    call = await at_secret_ready(gateway)
    key = session_key(call)
    ringing = await gateway.twilio.post("/ivr/status", form(call, CallStatus="in-progress"))
    assert ringing.status_code == 204
    assert await redis.exists(key)
    done = await gateway.twilio.post("/ivr/status", form(call, CallStatus="completed"))
    assert done.status_code == 204
    assert not await redis.exists(key)
    # A late step of the ended call is a polite transfer, not a 500.
    late = await answer_at(call, action_of(call), Digits="*")
    assert ru("voice.error_apology") in says(late.text)


# -- the flow moves only along the declared menu ------------------------------------------


async def state_of(redis: Redis, call: Call) -> State:
    session = await CallStore(redis, 3600).load(call.call_sid)
    assert session is not None
    return session.state


async def test_observed_transitions_are_declared(gateway: Gateway, redis: Redis) -> None:
    scripts = [
        ["1", "12#", "1" * 12 + "#", "2", MOBILE_ONLY + "#", "1", "1", "CODE", "*", "1"],
        ["2", MOBILE_ONLY + "#", "1", "1", "*", "000000", "2"],
        ["1", UNKNOWN + "#", "1", "2"],
        ["9", "5", "5", "5"],
    ]
    for keys in scripts:
        call = await at_main_menu(gateway)
        state = await state_of(redis, call)
        for key in keys:
            if call.twiml.find("Gather") is None:
                break
            await call.press(last_code(gateway) if key == "CODE" else key)
            new = await state_of(redis, call)
            assert new in successors(state) | {state}, (state, key, new)
            state = new


async def test_expired_code_in_the_verification_call_is_a_declared_goodbye(
    gateway: Gateway, redis: Redis
) -> None:
    callback = await at_verify_code(gateway)
    await expire_codes(redis)
    await callback.press("123456")
    assert ru("voice.verify_expired") in callback.text
    assert callback.verbs()[-1] == "Hangup"
    assert await state_of(redis, callback) in successors(State.verify_code)
