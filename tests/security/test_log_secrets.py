"""No secret reaches a log line or a repr (§6.7, STYLE rule 8).

Complete recoveries on both channels (voice with an SMS code, voice with a verification call,
SMS) and a spread of failures run with every log line captured: structlog's output on stderr
(capfd) and stdlib logging (caplog). None of the codes, temporary passwords, tokens, full
account numbers or full phone numbers used may appear in any of it.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from core.accounts.directory import AccountRecord
from core.kit.phones import parse_phone
from core.models import (
    Credential,
    Escalation,
    EscalationKind,
    Operator,
    OutboundChannel,
    OutboxMessage,
)
from core.platform.crypto import Keyring
from core.platform.settings import Settings
from core.recovery.service import Attempt, Channel, Completion, Purpose
from core.web.signature import SignatureVerifier, TwilioForm
from gateway.app import create_app
from ivr.menu import State
from ivr.session import CallSession, CallStore
from sms.thread import SmsThread
from tests.conftest import (
    AUTH_TOKEN,
    LANDLINE,
    LANDLINE_ONLY,
    MOBILE,
    MOBILE_ONLY,
    PUBLIC_BASE_URL,
    SECOND_MOBILE,
    TWO_MOBILES_EMAIL,
    UNKNOWN,
    Gateway,
    seed_accounts,
    settled_client,
)
from tests.support.fakes import RecordingMessenger
from tests.support.twilio_driver import Call, Phone, Twilio
from voice_prompts import Language

CODE = re.compile(r"\b(\d{6})\b")
# Timestamps carry six-digit microseconds, which a six-digit code could match by chance.
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?")
THIRD_MOBILE = "+79037771230"  # the other mobile of TWO_MOBILES_EMAIL
STRANGER = "+79990001122"
TEXTER = "+79161234567"  # a mobile on no account, texting the short number
ACCOUNTS = [MOBILE_ONLY, LANDLINE_ONLY, TWO_MOBILES_EMAIL, UNKNOWN]
PHONES = [MOBILE, LANDLINE, SECOND_MOBILE, THIRD_MOBILE, STRANGER, TEXTER]


def phone_forms(e164: str) -> list[str]:
    """+79123456789, 79123456789 and 89123456789."""
    return [e164, e164.lstrip("+"), "8" + e164.removeprefix("+7")]


@dataclass
class Secrets:
    """Every value that must not be logged, gathered while the flows run."""

    codes: set[str] = field(default_factory=set)
    passwords: set[str] = field(default_factory=set)
    fixed: list[str] = field(default_factory=list)

    def leaks(self, text: str) -> list[str]:
        """The secrets found in a text."""
        found = [value for value in (*self.fixed, *self.passwords) if value in text]
        without_times = TIMESTAMP.sub("<time>", text)
        found += [c for c in self.codes if re.search(rf"(?<!\d){c}(?!\d)", without_times)]
        return found


def fixed_secrets(settings: Settings) -> list[str]:
    return [
        AUTH_TOKEN,
        settings.twilio_auth_token.get_secret_value(),
        settings.secret_key.get_secret_value(),
        *ACCOUNTS,
        *(form for phone in PHONES for form in phone_forms(phone)),
    ]


@asynccontextmanager
async def gateway_logging(settings: Settings) -> AsyncIterator[Gateway]:
    """The app built inside the test, so its log output goes to the captured stderr."""
    await seed_accounts(settings)
    messenger = RecordingMessenger()
    app = create_app(settings, messenger=messenger)
    async with app.router.lifespan_context(app), settled_client(app) as h:
        yield Gateway(app, Twilio(h, PUBLIC_BASE_URL, AUTH_TOKEN), messenger, settings)


# -- the flows ----------------------------------------------------------------------------


@dataclass
class Run:
    gateway: Gateway
    redis: Redis
    found: Secrets

    @property
    def keyring(self) -> Keyring:
        return Keyring(self.gateway.settings)

    def last_code(self, phone: str) -> str:
        messages = [m for m in self.gateway.messenger.to(phone) if m.purpose == "code"]
        assert messages, f"no code SMS to {phone}"
        match = CODE.search(messages[-1].body)
        assert match
        self.found.codes.add(match.group(1))
        return match.group(1)

    def sms_secrets(self) -> None:
        """The codes and passwords that went out by SMS."""
        for message in self.gateway.messenger.sent:
            if message.purpose == "code":
                match = CODE.search(message.body)
                assert match
                self.found.codes.add(match.group(1))
            if message.purpose == "password":
                self.found.passwords.add(message.body.split()[3].rstrip("."))

    async def sealed(self, call: Call) -> str:
        """The code or password the call is able to repeat (sealed in its Redis state)."""
        session = await CallStore(self.redis, 3600).load(call.call_sid)
        assert session, "the call has no state"
        secret = self.keyring.unseal(session.sealed or "")
        assert secret
        return secret

    async def to_method_choice(self, call: Call, account: str, purpose_key: str = "1") -> None:
        await call.start()
        for keys in (purpose_key, account + "#", "1"):
            await call.press(keys)

    async def end(self, call: Call) -> None:
        params = {"CallSid": call.call_sid, "CallStatus": "completed", "From": call.caller}
        assert (await self.gateway.twilio.post("/ivr/status", params)).status_code == 204

    async def voice_with_sms_code(self) -> None:
        call = self.gateway.call(caller=STRANGER)
        await self.to_method_choice(call, MOBILE_ONLY)
        await call.press("1")
        code = self.last_code(MOBILE)
        await call.press(f"{(int(code) + 1) % 10**6:06d}")  # one wrong try first
        await call.press(code)
        assert "Первая группа" in call.text
        self.found.passwords.add(await self.sealed(call))
        await call.press("*")
        await call.press("1")
        await self.end(call)

    async def voice_login(self) -> None:
        call = self.gateway.call(caller=SECOND_MOBILE)
        await self.to_method_choice(call, TWO_MOBILES_EMAIL, purpose_key="2")
        await call.press("1")
        await call.press(self.last_code(THIRD_MOBILE))
        await self.end(call)

    async def voice_call_verification(self) -> None:
        call = self.gateway.call(caller=LANDLINE)
        await self.to_method_choice(call, LANDLINE_ONLY)
        await call.press("2")
        await call.hang_up()  # the code call is placed once the caller hung up
        placed = self.gateway.messenger.to(LANDLINE, "call")
        assert placed
        callback = Call(self.gateway.twilio, caller="+78005550100", called=LANDLINE)
        await callback.start(placed[-1].url.removeprefix(PUBLIC_BASE_URL))
        await callback.press("5")
        code = await self.sealed(callback)
        self.found.codes.add(code)
        await callback.press("*")
        await callback.press(f"{(int(code) + 1) % 10**6:06d}")
        await callback.press(code)
        assert "Первая группа" in callback.text
        self.found.passwords.add(await self.sealed(callback))
        await self.end(callback)
        await self.end(call)

    async def sms_recoveries(self) -> None:
        phone = Phone(self.gateway.twilio, MOBILE)
        await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
        code = self.last_code(MOBILE)
        await phone.text(f"{(int(code) + 1) % 10**6:06d}")
        await phone.text(f"КОД {code}")
        second = Phone(self.gateway.twilio, SECOND_MOBILE)
        await second.text(f"LOGIN {TWO_MOBILES_EMAIL}")
        await second.text(self.last_code(SECOND_MOBILE))

    async def failures(self) -> None:
        gateway = self.gateway
        # Unknown accounts, a stranger's requests, wrong and malformed codes.
        stranger = Phone(gateway.twilio, TEXTER)
        for text in (f"ВОССТАНОВИТЬ {UNKNOWN}", f"ВОССТАНОВИТЬ {MOBILE_ONLY}", "123456", "КОД 12"):
            await stranger.text(text)
        call = gateway.call(caller=STRANGER)
        await self.to_method_choice(call, UNKNOWN)
        await call.press("1")
        for _ in range(gateway.settings.menu_max_tries):
            if call.twiml.find("Gather") is None:
                break
            await call.press("000000")
        # The operator hears the whisper of a failed case.
        whisper = call.twiml.find("Dial/Number")
        if whisper is not None:
            await gateway.twilio.post(
                str(whisper.get("url")).removeprefix(PUBLIC_BASE_URL), {"CallSid": "CA" + "e" * 32}
            )
        # A code SMS that bounces, then the offered call.
        texter = Phone(gateway.twilio, MOBILE)
        await texter.text(f"RESTORE {MOBILE_ONLY}")
        await gateway.settle()
        self.sms_secrets()
        bounced = [m for m in gateway.messenger.sent if m.purpose == "code"]
        sid = f"SM{gateway.messenger.sent.index(bounced[-1]) + 1:032d}"
        status = {"MessageSid": sid, "MessageStatus": "undelivered", "ErrorCode": "30007",
                  "To": MOBILE, "From": "+78005550101"}  # fmt: skip
        assert (await gateway.twilio.post("/sms/status", status)).status_code == 204
        await texter.text("ЗВОНОК")
        # Operator callback, opt-out and back.
        await texter.text("ОПЕРАТОР")
        await Phone(gateway.twilio, STRANGER).text("СТОП")
        await Phone(gateway.twilio, STRANGER).text("START")
        # Forged and malformed webhooks that carry numbers.
        params = {"CallSid": "CA" + "d" * 32, "From": MOBILE, "Digits": MOBILE_ONLY}
        forged = await gateway.twilio.post("/ivr/voice", params, signature="Zm9yZ2Vk")
        assert forged.status_code == 403
        bad = f"From={MOBILE}&Body=RESTORE+{MOBILE_ONLY}&X=\xff".encode("latin-1")
        response = await gateway.twilio.http.post(
            "/sms/inbound",
            content=bad,
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 400
        # The provider fails mid-recovery: an apology and a transfer, logged by type only.
        gateway.messenger.fail = True
        call = gateway.call(caller=LANDLINE)
        await self.to_method_choice(call, TWO_MOBILES_EMAIL)
        await call.press("1")
        await Phone(gateway.twilio, SECOND_MOBILE).text(f"ВОССТАНОВИТЬ {TWO_MOBILES_EMAIL}")
        gateway.messenger.fail = False
        # A step of a call that does not exist, and an unknown whisper reason.
        await gateway.twilio.post("/ivr/step?s=3", {"CallSid": "CA" + "c" * 32, "From": MOBILE})
        await gateway.twilio.post(
            f"/ivr/whisper?c={call.call_sid}&r=nonsense", {"CallSid": "CA" + "b" * 32}
        )


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("log_json", [False, True], ids=["console", "json"])
async def test_no_secret_in_any_log_output(
    settings: Settings,
    redis: Redis,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    log_json: bool,
) -> None:
    # Stdlib loggers at the gateway's level; its own structlog lines at DEBUG, the most verbose.
    caplog.set_level(logging.INFO)
    settings = settings.model_copy(update={"log_json": log_json, "log_level": "DEBUG"})
    found = Secrets(fixed=fixed_secrets(settings))
    async with gateway_logging(settings) as gateway:
        run = Run(gateway, redis, found)
        await run.voice_with_sms_code()
        await run.voice_login()
        await run.voice_call_verification()
        await run.sms_recoveries()
        await run.failures()
        await gateway.settle()  # every send done, even one the sweeper took over
        run.sms_secrets()

    captured = capfd.readouterr()
    stdlib = caplog.text + "\n".join(
        f"{r.getMessage()} {r.args!r} {r.__dict__!r}" for r in caplog.records
    )
    output = "\n".join([captured.out, captured.err, stdlib])

    # The flows did what they should, and their log lines were captured.
    assert len(found.codes) >= 5 and len(found.passwords) >= 3, (found.codes, found.passwords)
    sent = gateway.messenger.sent
    assert {"code", "password", "login", "notice", "code_call"} <= {m.purpose for m in sent}
    for event in ("recovery.completed", "webhook.bad_signature", "sms.inbound", "ivr.step"):
        assert event in output, f"{event} was not logged: is the log captured?"

    leaks = found.leaks(output)
    lines = [line for line in output.splitlines() if found.leaks(line)]
    assert not leaks, f"secrets in the log: {len(leaks)} kinds; first lines: {lines[:5]}"


# -- reprs --------------------------------------------------------------------------------

PASSWORD = "k7vnm4tz9p"
CODE_VALUE = "583914"


def secret_settings() -> Settings:
    return Settings(
        _env_file=None,
        twilio_auth_token="tok-" + secrets.token_hex(16),
        secret_key="key-" + secrets.token_hex(24),
    )


def objects(settings: Settings) -> list[object]:
    keyring = Keyring(settings)
    phones = tuple(parse_phone(p) for p in (MOBILE, LANDLINE, SECOND_MOBILE))
    code_sms = f"ЕИРЦ: код {CODE_VALUE}. Никому его не говорите."
    return [
        CallSession(
            call_sid="CA" + "1" * 32,
            caller=MOBILE,
            state=State.secret_ready,
            account=MOBILE_ONLY,
            attempt_id="att-" + "x" * 20,
            sealed=keyring.seal(PASSWORD),
        ),
        Attempt(
            id="att-" + "x" * 20,
            account_number=MOBILE_ONLY,
            purpose=Purpose.password,
            channel=Channel.voice,
            session_ref="CA" + "1" * 32,
            language=Language.ru,
        ),
        Completion(purpose=Purpose.password, secret=PASSWORD, sent_by_sms=True),
        AccountRecord(
            account_number=MOBILE_ONLY,
            login="ivanova.mv",
            full_name="Иванова Мария Викторовна",
            email="m.ivanova@example.ru",
            phones=phones,
        ),
        OutboxMessage(
            id=1,
            channel=OutboundChannel.sms,
            to_number=MOBILE,
            from_number="+78005550101",
            body=code_sms,
            purpose="code",
            provider_sid="SM" + "1" * 32,
        ),
        TwilioForm(
            {"From": MOBILE, "To": LANDLINE, "Digits": CODE_VALUE, "Body": f"RESTORE {MOBILE_ONLY}"}
        ),
        settings,
        keyring,
        SignatureVerifier(settings),
        *phones,
        SmsThread(sender=MOBILE, attempt_id="att-1", purpose="password"),
        Credential(account_id=1, password_hash="$argon2id$" + PASSWORD, is_temporary=True),
        Operator(id=1, username="ivanova", password_hash="$argon2id$" + PASSWORD),
        Escalation(
            id=1,
            kind=EscalationKind.callback,
            channel="sms",
            phone=MOBILE,
            account_masked="*******001",
            reason="caller_request",
            context=f'{{"account": "{MOBILE_ONLY}"}}',
            created_at=datetime.now(UTC),
        ),
    ]


def test_reprs_carry_no_secret() -> None:
    settings = secret_settings()
    forbidden = [
        PASSWORD,
        CODE_VALUE,
        settings.twilio_auth_token.get_secret_value(),
        settings.secret_key.get_secret_value(),
        MOBILE_ONLY,
        "Иванова",
        "m.ivanova@example.ru",
        *(form for phone in (MOBILE, LANDLINE, SECOND_MOBILE) for form in phone_forms(phone)),
    ]
    for item in objects(settings):
        for text in (repr(item), str(item), f"{item!r:>10}"):
            leaked = [value for value in forbidden if value in text]
            assert not leaked, f"{type(item).__name__} repr shows {len(leaked)} secret(s): {text}"


def test_the_repr_check_would_catch_a_leak() -> None:
    """A dataclass's default repr shows every field: the check above is not vacuous."""

    @dataclass
    class Leaky:
        secret: str

    assert PASSWORD in repr(Leaky(PASSWORD))


def test_the_log_check_finds_each_kind_of_secret() -> None:
    settings = secret_settings()
    found = Secrets(codes={CODE_VALUE}, passwords={PASSWORD}, fixed=fixed_secrets(settings))
    # Six-digit microseconds in a timestamp are not a code.
    assert found.leaks(f"2026-11-24T21:23:30.{CODE_VALUE}Z [info] ivr.step") == []
    for line in (
        f"code={CODE_VALUE}",
        f"password={PASSWORD}",
        f"from={MOBILE}",
        "to=79123456789",
        "caller=89123456789",
        f"account={UNKNOWN}",
        f"token={settings.twilio_auth_token.get_secret_value()}",
        f"key={settings.secret_key.get_secret_value()}",
    ):
        assert found.leaks(line), line


def test_stdlib_library_logs_are_scrubbed_too(capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    from gateway.logging import configure_logging

    configure_logging(json=False, level="DEBUG")
    try:
        logging.getLogger("aiosqlite").debug("executing %s with (%r,)", "SELECT", "+79123456789")
        logging.getLogger("sqlalchemy.engine").info("params ('1000000001',)")
        err = capfd.readouterr().err
        assert "9123456789" not in err and "1000000001" not in err
        assert "aiosqlite" in err and "*" in err
    finally:
        configure_logging(json=False, level="INFO")
