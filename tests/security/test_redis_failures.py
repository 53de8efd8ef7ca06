"""Redis failing mid-flow (§6.4): sending and verifying fail closed, politely, and recover.

Redis holds the codes, the limits, the attempts and the call state. When it fails, no code may
go out that was not stored or counted, and no password may be issued for a check that did not
complete; the caller hears an apology and is transferred (voice), or gets the error reply (SMS).
Once Redis is back, the same service works again.

The failures are injected by `FlakyRedis`, the real client with a switch in front of the
commands (and pipelines) that touch chosen keys, swapped into the running app's services.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError

from core.platform.container import Services
from core.recovery import codes
from gateway.app import create_app
from ivr import session
from tests.conftest import MOBILE, MOBILE_ONLY, Gateway
from tests.ivr.test_webhooks import (
    OLD_PASSWORD,
    assert_operator_dial,
    at_code_entry,
    at_method_choice,
    credential_state,
    fetch_whisper,
    last_code,
    ru,
    set_password,
)
from tests.support.fakes import RecordingMessenger
from tests.support.servers import free_port
from tests.support.twilio_driver import Call, Phone, Twilio
from voice_prompts import Language, load_catalogue

PROMPTS = load_catalogue()
HOTLINE = "+78005550100"

Matcher = Callable[[tuple[Any, ...]], bool]


def everything(_: tuple[Any, ...]) -> bool:
    return True


def running(lua: str) -> Matcher:
    """Runs of one Lua script (its SHA, as `core.platform.redis.Script` sends it)."""
    sha = hashlib.sha1(lua.encode(), usedforsecurity=False).hexdigest()

    def matches(args: tuple[Any, ...]) -> bool:
        return bool(args[0] == "EVALSHA" and args[1] == sha)

    return matches


# What used to be keys of their own live in the attempt's hash (core/recovery/codes.py) and the call's
# hash (ivr/session.py): their scripts say which part is touched.
ISSUE_CODE = running(codes._ISSUE)
CHECK_CODE = running(codes._VERIFY)
COOL_DOWN = running(codes._COOL_DOWN)
SAVE_CALL = running(session._SAVE)


def CLOSE_ATTEMPT(args: tuple[Any, ...]) -> bool:  # noqa: N802 - a matcher, named like the others
    return args[0] == "DEL" and str(args[1]).startswith("attempt:")


def touching(prefix: str) -> Matcher:
    """Commands with a key (or script key) that starts with `prefix`."""

    def matches(args: tuple[Any, ...]) -> bool:
        return any(isinstance(arg, str) and arg.startswith(prefix) for arg in args[1:])

    return matches


@dataclass
class Outage:
    """Which commands fail: those that match, once the first `spare` matching ones went through."""

    matches: Matcher | None = None
    spare: int = 0
    failed: int = 0

    def start(self, matches: Matcher = everything, *, spare: int = 0) -> None:
        """Fail the matching commands from now on (after `spare` more of them)."""
        self.matches, self.spare = matches, spare

    def end(self) -> None:
        """Redis is back."""
        self.matches = None

    def check(self, args: tuple[Any, ...]) -> None:
        if self.matches is None or not self.matches(args):
            return
        if self.spare > 0:
            self.spare -= 1
            return
        self.failed += 1
        raise RedisConnectionError("injected: Redis is unavailable")


class FlakyPipeline(Pipeline):
    """A pipeline that fails as a whole, before sending, when one of its commands would."""

    outage: Outage

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        for args, _ in self.command_stack:
            self.outage.check(tuple(args))
        result: list[Any] = await super().execute(raise_on_error)
        return result


class FlakyRedis(Redis):
    """The real client on the real server, with the outage switch in front of every command."""

    def __init__(self, original: Redis, outage: Outage) -> None:
        super().__init__(connection_pool=original.connection_pool)
        self.outage = outage

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.outage.check(args)
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = FlakyPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.outage = self.outage
        return pipe


@pytest.fixture
async def outage(gateway: Gateway) -> AsyncIterator[Outage]:
    """Swap the app's Redis client for a FlakyRedis on the same server; healthy until told."""
    services: Services = gateway.app.state.services
    original = services.redis
    switch = Outage()
    services.redis = FlakyRedis(original, switch)
    yield switch
    services.redis = original


def sms_reply(key: str, language: Language = Language.ru) -> str:
    return PROMPTS.text(key, language, hotline=HOTLINE)


def purposes(gateway: Gateway, number: str = MOBILE) -> list[str]:
    return [message.purpose for message in gateway.messenger.to(number)]


async def assert_apology_and_operator(call: Call, gateway: Gateway) -> None:
    """A spoken apology, then the transfer: the driver already checked 200 and the TwiML."""
    assert ru("voice.error_apology") in call.text, call.text
    assert call.twiml.find("Gather") is None
    assert_operator_dial(call, gateway)
    assert ru("whisper.reason_error") in await fetch_whisper(gateway, call)


async def assert_recovery_works(gateway: Gateway) -> None:
    """A whole recovery by voice, from a new call: Redis is back, and so is the service."""
    call = await at_code_entry(gateway)
    await call.press(last_code(gateway))
    assert "Первая группа" in call.text, call.text
    assert purposes(gateway)[-1] == "password"


# -- sending a code -----------------------------------------------------------------------

SEND_STEPS = {
    "limits": touching("rate:"),
    "code store": ISSUE_CODE,
    "cool-down": COOL_DOWN,
    "attempt": touching("attempt:"),
    "failure cap": touching("fails:"),
}


@pytest.mark.parametrize("failing", SEND_STEPS.values(), ids=SEND_STEPS.keys())
async def test_no_code_goes_out_when_redis_fails_while_sending(
    gateway: Gateway, outage: Outage, redis: Redis, failing: Matcher
) -> None:
    call = await at_method_choice(gateway)
    outage.start(failing)
    await call.press("1")
    assert outage.failed >= 1
    await assert_apology_and_operator(call, gateway)
    assert gateway.messenger.sent == []
    assert not [key for key in await redis.keys("attempt:*") if await redis.hexists(key, "h")]

    outage.end()
    await assert_recovery_works(gateway)


async def test_no_call_is_placed_when_redis_fails_while_arranging_it(
    gateway: Gateway, outage: Outage
) -> None:
    call = await at_method_choice(gateway)
    outage.start(touching("rate:"))
    await call.press("2")
    await assert_apology_and_operator(call, gateway)
    assert gateway.messenger.sent == []


# -- verifying a code ---------------------------------------------------------------------

VERIFY_STEPS = {
    "code check": (CHECK_CODE, 0),
    "failure cap": (touching("fails:"), 0),
    "attempt": (touching("attempt:"), 0),
    # The attempt loads, the code is accepted, then Redis fails as the recovery completes.
    "completion": (CLOSE_ATTEMPT, 0),
    "everything": (everything, 0),
}


@pytest.mark.parametrize(("failing", "spare"), VERIFY_STEPS.values(), ids=VERIFY_STEPS.keys())
async def test_no_password_is_issued_when_redis_fails_while_verifying(
    gateway: Gateway, outage: Outage, failing: Matcher, spare: int
) -> None:
    await set_password(gateway.settings, MOBILE_ONLY, OLD_PASSWORD)
    before = await credential_state(gateway.settings, MOBILE_ONLY)
    call = await at_code_entry(gateway)
    outage.start(failing, spare=spare)
    await call.press(last_code(gateway))
    assert outage.failed >= 1
    assert ru("voice.error_apology") in call.text
    assert_operator_dial(call, gateway)
    assert await credential_state(gateway.settings, MOBILE_ONLY) == before
    assert purposes(gateway) == ["code"]  # no password, no notice

    outage.end()
    await assert_recovery_works(gateway)
    assert await credential_state(gateway.settings, MOBILE_ONLY) != before


async def test_a_failure_after_the_password_was_issued_rolls_it_back(
    gateway: Gateway, outage: Outage
) -> None:
    """Redis fails only when the call's state is saved, after the flow issued the password."""
    await set_password(gateway.settings, MOBILE_ONLY, OLD_PASSWORD)
    before = await credential_state(gateway.settings, MOBILE_ONLY)
    call = await at_code_entry(gateway)
    outage.start(SAVE_CALL)
    await call.press(last_code(gateway))
    assert outage.failed == 1
    assert ru("voice.error_apology") in call.text and "Первая группа" not in call.text
    assert_operator_dial(call, gateway)
    assert await credential_state(gateway.settings, MOBILE_ONLY) == before
    assert purposes(gateway) == ["code"]


# -- the SMS channel ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "failing",
    [touching("rate:"), ISSUE_CODE, touching("sms:thread:"), touching("attempt:")],
    ids=["rate", "code", "thread", "attempt"],
)
async def test_sms_request_fails_closed(gateway: Gateway, outage: Outage, failing: Matcher) -> None:
    phone = Phone(gateway.twilio, MOBILE)
    outage.start(failing)
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == [sms_reply("sms.reply_error")]
    assert gateway.messenger.sent == []

    outage.end()
    # The code SMS is the owner's reply (§4).
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == []
    assert purposes(gateway) == ["code"]


@pytest.mark.parametrize(
    "failing",
    [CHECK_CODE, touching("fails:"), touching("sms:thread:")],
    ids=["code", "fails", "thread"],
)
async def test_sms_code_check_fails_closed(
    gateway: Gateway, outage: Outage, failing: Matcher
) -> None:
    await set_password(gateway.settings, MOBILE_ONLY, OLD_PASSWORD)
    before = await credential_state(gateway.settings, MOBILE_ONLY)
    phone = Phone(gateway.twilio, MOBILE)
    await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    code = last_code(gateway)
    outage.start(failing)
    assert await phone.text(code) == [sms_reply("sms.reply_error")]
    assert await credential_state(gateway.settings, MOBILE_ONLY) == before
    assert purposes(gateway) == ["code"]

    # Back again: the code was not used up by the check that could not complete.
    outage.end()
    assert await phone.text(code) == []
    assert purposes(gateway) == ["code", "password"]
    assert await credential_state(gateway.settings, MOBILE_ONLY) != before


# -- no Redis at all ----------------------------------------------------------------------


@pytest.fixture
async def without_redis(gateway: Gateway) -> AsyncIterator[Gateway]:
    """A second app on the same database, its Redis URL a port nothing listens on."""
    settings = gateway.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    )
    messenger = RecordingMessenger()
    app = create_app(settings, messenger=messenger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://gateway.internal"
        ) as http:
            twilio = Twilio(http, gateway.twilio.public_base_url, gateway.twilio.auth_token)
            yield Gateway(app, twilio, messenger, settings)


async def test_without_redis_every_webhook_is_a_polite_answer(without_redis: Gateway) -> None:
    call = without_redis.call()
    await call.start()
    assert ru("voice.error_apology") in call.text
    assert call.verbs()[-1] == "Dial"
    step = await without_redis.twilio.post(
        "/ivr/step?s=0", {"CallSid": call.call_sid, "From": MOBILE, "Digits": "1"}
    )
    assert step.status_code == 200 and ru("voice.error_apology") in step.text
    phone = Phone(without_redis.twilio, MOBILE)
    assert await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}") == [sms_reply("sms.reply_error")]
    assert without_redis.messenger.sent == []
    ready = await without_redis.twilio.http.get("/readyz")
    assert ready.status_code == 503 and "redis" in ready.text


async def test_the_operator_still_hears_a_summary_when_redis_is_down(
    gateway: Gateway, outage: Outage
) -> None:
    call = await at_method_choice(gateway)
    outage.start(touching(""))
    await call.press("1")
    await assert_apology_and_operator(call, gateway)
    # The operator's leg and the dial result need no state: both answer, Redis or not.
    dial = call.twiml.find("Dial")
    assert dial is not None and dial.get("action")
    result = await gateway.twilio.post(
        str(dial.get("action")), {"CallSid": call.call_sid, "DialCallStatus": "no-answer"}
    )
    assert result.status_code == 200 and ru("voice.operator_unavailable") in result.text
