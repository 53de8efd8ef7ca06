"""A whole voice recovery with the real Twilio client: every REST request it makes must be one
the contract mock, generated from Twilio's OpenAPI document, accepts (§7)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select

from core.delivery.dispatcher import Dispatcher, RetryPolicy
from core.delivery.twilio import TwilioMessenger
from core.models import OutboxMessage
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker
from core.platform.settings import MessengerKind, Settings
from gateway.app import create_app
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.support.twilio_driver import Call, Twilio
from voice_prompts import Language, load_catalogue


class SpyingTwilioMessenger(TwilioMessenger):
    """The real Twilio messenger; remembers the texts only so the test can key the code back."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.texts: list[str] = []

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        sid = await super().send_sms(to=to, body=body, purpose=purpose)
        self.texts.append(body)
        return sid


@pytest.fixture
async def twilio_gateway(
    settings: Settings, twilio_mock_url: str, redis: Redis
) -> AsyncIterator[tuple[Twilio, SpyingTwilioMessenger, Settings]]:
    settings = settings.model_copy(
        update={
            "messenger": MessengerKind.twilio,
            "twilio_api_url": twilio_mock_url,
            "twilio_account_sid": "AC0123456789abcdef0123456789abcdef",
        }
    )
    await seed_accounts(settings)
    messenger = SpyingTwilioMessenger(settings)
    app = create_app(settings, messenger=messenger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), messenger, settings


async def test_sms_code_recovery_through_the_twilio_contract(
    twilio_gateway: tuple[Twilio, SpyingTwilioMessenger, Settings],
) -> None:
    twilio, messenger, settings = twilio_gateway
    call = Call(twilio, caller=MOBILE)
    await call.start()
    await call.press("1")
    await call.press(MOBILE_ONLY + "#")
    await call.press("1")
    await call.press("1")
    assert "Код отправлен в СМС" in call.text
    code = messenger.texts[-1].split("код ")[1][:6]
    await call.press(code)
    assert "Готово" in call.text
    # Code SMS and password SMS both accepted by the mock; the records keep no text at rest.
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        rows = (await session.scalars(select(OutboxMessage))).all()
    await engine.dispose()
    assert [row.purpose for row in rows] == ["code", "password"]
    assert all(row.provider_sid and row.provider_sid.startswith("SM") for row in rows)
    assert all(row.body == "" and row.status == "sent" for row in rows)


async def test_voice_call_is_placed_through_the_twilio_contract(
    twilio_gateway: tuple[Twilio, SpyingTwilioMessenger, Settings],
) -> None:
    twilio, messenger, settings = twilio_gateway
    call = Call(twilio, caller=MOBILE)
    await call.start()
    await call.press("1")
    await call.press(MOBILE_ONLY + "#")
    await call.press("1")
    await call.press("2")
    assert call.verbs()[-1] == "Hangup" and "позвоним" in call.text
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        rows = (await session.scalars(select(OutboxMessage))).all()
    await engine.dispose()
    assert len(rows) == 1 and rows[0].channel == "call"
    assert rows[0].url and rows[0].url.startswith(f"{PUBLIC_BASE_URL}/ivr/verify?a=")
    # Held while the caller listens; placed through the contract mock once they hung up.
    assert (rows[0].status, rows[0].provider_sid) == ("queued", None)
    assert await call.hang_up() == 204
    first = await outbox_row(settings)
    assert first.status == "sent" and first.provider_sid and first.provider_sid.startswith("CA")
    assert first.from_number == settings.hotline_number

    # Busy: Twilio's status callback (our key in its URL) queues it again, and the retry goes
    # through the contract mock too, as a new call.
    params = {
        "AccountSid": settings.twilio_account_sid,
        "CallSid": first.provider_sid,
        "CallStatus": "busy",
        "Direction": "outbound-api",
        "From": settings.hotline_number,
        "To": first.to_number,
    }
    answer = await twilio.post(f"/ivr/status?outbox={first.idempotency_key}", params)
    assert answer.status_code == 204
    queued = await outbox_row(settings)
    assert (queued.status, queued.reason, queued.provider_sid) == ("queued", "retrying", None)
    later = utcnow() + timedelta(seconds=settings.verification_call_retry_seconds + 5)

    async def no_hook(*_: object) -> None:
        return None

    engine = create_engine(settings.database_url)
    sweeper = Dispatcher(  # any process's sweeper, once the retry is due
        create_sessionmaker(engine),
        messenger,
        Keyring(settings),
        no_hook,
        RetryPolicy.from_settings(settings),
        clock=lambda: later,
    )
    assert await sweeper.drain() == 1
    await engine.dispose()
    second = await outbox_row(settings)
    assert second.status == "sent" and second.attempts == 2
    assert second.provider_sid and second.provider_sid.startswith("CA")


async def outbox_row(settings: Settings) -> OutboxMessage:
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        [row] = (await session.scalars(select(OutboxMessage))).all()
    await engine.dispose()
    return row


async def test_an_unreachable_twilio_is_told_honestly_with_the_call_offered(
    settings: Settings, redis: Redis
) -> None:
    # Nothing listens on the discard port: the REST client fails to connect.
    settings = settings.model_copy(
        update={"messenger": MessengerKind.twilio, "twilio_api_url": "http://127.0.0.1:9"}
    )
    await seed_accounts(settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            call = Call(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), caller=MOBILE)
            await call.start()
            await call.press("1")
            await call.press(MOBILE_ONLY + "#")
            await call.press("1")
            await call.press("1")
            # The answer never waits for the provider; the next prompt offers the call as always.
            await call.press("12")
    assert load_catalogue().text("voice.code_entry_short", Language.ru) in call.text
    assert call.gather.get("action")
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        [row] = (await session.scalars(select(OutboxMessage))).all()
    await engine.dispose()
    # Not lost: queued again for a retry with backoff (core/delivery/dispatcher.py), the call offered now.
    assert (row.status, row.purpose, row.provider_sid) == ("queued", "code", None)
    assert row.attempts >= 1 and (row.error_code, row.reason) == ("connect", "retrying")
