"""Twilio REST faults, with the real twilio client against the contract mock behind a proxy.

The proxy (tests/support/twilio_fault_proxy.py) answers 5xx/429/4xx in Twilio's error format,
stalls, or forwards to Prism, which checks every request that gets through against Twilio's
OpenAPI document. It counts requests: "never sent twice" is counted, not assumed. Time and
jitter are injected into the dispatcher; the only real waiting is the client's own 0.5 s read
timeout in the stall test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.delivery.dispatcher import Dispatcher, RetryPolicy
from core.delivery.messenger import OUTBOX_KEY_PARAM
from core.delivery.outbox import Delivery, record_status
from core.delivery.twilio import TwilioMessenger
from core.models import OutboxMessage
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import MessengerKind, Settings
from gateway.app import create_app
from tests.conftest import (
    AUTH_TOKEN,
    MOBILE,
    MOBILE_ONLY,
    PUBLIC_BASE_URL,
    SECOND_MOBILE,
    seed_accounts,
)
from tests.support.fakes import RecordingMessenger
from tests.support.servers import free_port
from tests.support.twilio_driver import Call, Phone, Twilio
from tests.support.twilio_fault_proxy import FaultProxy
from voice_prompts import Language, load_catalogue

ACCOUNT_SID = "AC0123456789abcdef0123456789abcdef"
T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def ru(key: str) -> str:
    return load_catalogue().text(key, Language.ru, hotline="+78005550100")


@pytest.fixture
async def proxy(twilio_mock_url: str) -> AsyncIterator[FaultProxy]:
    fault_proxy = FaultProxy(twilio_mock_url)
    await fault_proxy.start()
    yield fault_proxy
    await fault_proxy.stop()


def twilio_settings(settings: Settings, api_url: str, **extra: object) -> Settings:
    return settings.model_copy(
        update={
            "messenger": MessengerKind.twilio,
            "twilio_api_url": api_url,
            "twilio_account_sid": ACCOUNT_SID,
            # Small, so that the stall test waits half a second, not ten.
            "twilio_timeout_seconds": 0.5,
            **extra,
        }
    )


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Outbox:
    """A database with the real Twilio messenger's dispatcher on it; time is the test's."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    clock: Clock
    failures: list[str]

    def dispatcher(self, api_url: str) -> Dispatcher:
        settings = twilio_settings(self.settings, api_url)

        async def on_failure(session: AsyncSession, row: OutboxMessage) -> None:
            self.failures.append(row.reason or "")

        return Dispatcher(
            self.sessionmaker,
            TwilioMessenger(settings),
            Keyring(settings),
            on_failure,
            RetryPolicy.from_settings(settings),
            clock=self.clock,
            # The random part of full jitter, fixed: half the ceiling.
            jitter=lambda low, high: (low + high) / 2,
        )

    async def queue(self, purpose: str = "code") -> int:
        async with transaction(self.sessionmaker) as session:
            delivery = Delivery(self.settings, session, Keyring(self.settings), lambda: None)
            await delivery.sms(MOBILE, "ЕИРЦ: код 123456", purpose, attempt_ref="attempt-1")
            row_id = await session.scalar(
                select(OutboxMessage.id).order_by(OutboxMessage.id.desc())
            )
        assert row_id is not None
        return row_id

    async def row(self, row_id: int) -> OutboxMessage:
        async with self.sessionmaker() as session:
            row = await session.get(OutboxMessage, row_id)
        assert row is not None
        return row

    async def wait_until_due(self, row_id: int) -> None:
        """Time passes (by hand) until the row's next attempt is due."""
        row = await self.row(row_id)
        assert row.next_attempt_at is not None
        self.clock.now = max(self.clock.now, row.next_attempt_at)


@pytest.fixture
async def outbox(settings: Settings) -> AsyncIterator[Outbox]:
    await seed_accounts(settings)
    engine = create_engine(settings.database_url)
    yield Outbox(settings, engine, create_sessionmaker(engine), Clock(), [])
    await engine.dispose()


async def test_5xx_and_429_lose_nothing_and_the_message_goes_once_the_fault_clears(
    outbox: Outbox, proxy: FaultProxy
) -> None:
    proxy.plan = ["503", "500", "429"]
    dispatcher = outbox.dispatcher(proxy.url)
    row_id = await outbox.queue("notice")
    waits = []
    for expected in ("http_503", "http_500", "http_429"):
        assert await dispatcher.drain() == 1
        row = await outbox.row(row_id)
        assert (row.status, row.error_code, row.provider_sid) == ("queued", expected, None)
        assert row.next_attempt_at is not None
        waits.append((row.next_attempt_at - outbox.clock.now).total_seconds())
        assert await dispatcher.drain() == 0  # not due: nothing asked of Twilio
        await outbox.wait_until_due(row_id)
    # Half of the growing ceiling (2 s, 4 s), then the 429's Retry-After (7 s) above 4 s.
    assert waits == [1.0, 2.0, 7.0]
    # The fault has cleared: the mock takes the message, once.
    assert await dispatcher.drain() == 1
    row = await outbox.row(row_id)
    assert row.status == "sent" and row.provider_sid and row.provider_sid.startswith("SM")
    assert (row.attempts, row.body) == (4, "")
    creates = proxy.creates()
    assert [seen.answered for seen in creates] == ["503", "500", "429", "forward"]
    # Every try was the same message, and its StatusCallback names the row.
    callbacks = {seen.form["StatusCallback"] for seen in creates}
    [callback] = callbacks
    parts = urlsplit(callback)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"{PUBLIC_BASE_URL}/sms/status"
    assert parse_qs(parts.query)[OUTBOX_KEY_PARAM] == [row.idempotency_key]
    assert outbox.failures == []
    outbox.clock.now += timedelta(hours=1)
    assert await dispatcher.drain() == 0 and len(proxy.creates()) == 4


@pytest.mark.parametrize("code", ["21211", "21610"])
async def test_a_permanent_twilio_error_fails_at_once(
    outbox: Outbox, proxy: FaultProxy, code: str
) -> None:
    proxy.plan = [f"400:{code}"]
    dispatcher = outbox.dispatcher(proxy.url)
    row_id = await outbox.queue("code")
    await dispatcher.drain()
    row = await outbox.row(row_id)
    assert (row.status, row.reason, row.error_code, row.attempts) == (
        "failed",
        "permanent",
        code,
        1,
    )
    assert outbox.failures == ["permanent"]
    outbox.clock.now += timedelta(minutes=5)
    assert await dispatcher.drain() == 0 and len(proxy.creates()) == 1


async def test_connection_refused_keeps_the_row_for_the_next_try(
    outbox: Outbox, proxy: FaultProxy
) -> None:
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    row_id = await outbox.queue("notice")
    assert await outbox.dispatcher(refused).drain() == 1
    row = await outbox.row(row_id)
    assert (row.status, row.error_code, row.attempts) == ("queued", "connect", 1)
    # Twilio is reachable again (think: the next sweep, or another process).
    await outbox.wait_until_due(row_id)
    assert await outbox.dispatcher(proxy.url).drain() == 1
    row = await outbox.row(row_id)
    assert row.status == "sent" and row.attempts == 2 and len(proxy.creates()) == 1


async def test_a_stalled_twilio_is_ambiguous_never_resent_and_the_callback_closes_the_loop(
    outbox: Outbox, proxy: FaultProxy
) -> None:
    proxy.plan = ["stall"]
    dispatcher = outbox.dispatcher(proxy.url)
    row_id = await outbox.queue("code")
    await dispatcher.drain()  # the client's read timeout (0.5 s) runs out
    row = await outbox.row(row_id)
    assert (row.status, row.reason, row.error_code, row.body) == (
        "unknown",
        "ambiguous",
        "timeout",
        "",
    )
    # The resident is offered the other channel, and the SMS is not sent a second time.
    assert outbox.failures == ["ambiguous"]
    outbox.clock.now += timedelta(minutes=5)
    assert await dispatcher.drain() == 0 and len(proxy.creates()) == 1
    # Twilio had in fact taken it: its status callback names the row by the key in its URL.
    [seen] = proxy.creates()
    key = parse_qs(urlsplit(seen.form["StatusCallback"]).query)[OUTBOX_KEY_PARAM][0]
    async with transaction(outbox.sessionmaker) as session:
        await record_status(session, "SM" + "a" * 32, "delivered", None, outbox_key=key)
    row = await outbox.row(row_id)
    assert (row.status, row.provider_sid) == ("delivered", "SM" + "a" * 32)


async def test_an_expired_code_is_not_sent_late(outbox: Outbox, proxy: FaultProxy) -> None:
    proxy.plan = ["503"]
    dispatcher = outbox.dispatcher(proxy.url)
    row_id = await outbox.queue("code")
    await dispatcher.drain()
    row = await outbox.row(row_id)
    assert row.status == "queued" and row.send_before is not None
    # Twilio stays down past the code's validity (less the margin it needs to arrive).
    outbox.clock.now = row.send_before
    await dispatcher.drain()
    row = await outbox.row(row_id)
    assert (row.status, row.reason, row.body) == ("expired", "expired", "")
    assert len(proxy.creates()) == 1
    # Offered the call at the first failure; not a second time when it expired.
    assert outbox.failures == ["retrying"]


# -- through the webhooks: the resident is told and offered the other channel -------------


@pytest.fixture
async def gateway_behind_proxy(
    settings: Settings, redis: Redis, proxy: FaultProxy
) -> AsyncIterator[tuple[Twilio, Settings]]:
    settings = twilio_settings(
        settings,
        proxy.url,
        outbox_max_attempts=1,
        twilio_timeout_seconds=10.0,
    )
    await seed_accounts(settings)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), settings


async def outbox_rows(settings: Settings) -> list[OutboxMessage]:
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        rows = list((await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all())
    await engine.dispose()
    return rows


async def test_a_caller_whose_code_sms_was_given_up_is_offered_the_call(
    gateway_behind_proxy: tuple[Twilio, Settings], proxy: FaultProxy
) -> None:
    twilio, settings = gateway_behind_proxy
    proxy.default = "503"
    call = Call(twilio, caller=MOBILE)
    await call.start()
    await call.press("1")
    await call.press(MOBILE_ONLY + "#")
    await call.press("1")
    await call.press("1")  # SMS code: queued, the answer does not wait for Twilio
    assert ru("voice.code_sent") in call.text
    await call.press("12")
    # One request, a 503, and the cap (1 attempt here) reached: recorded; the code prompt
    # offers the call to everyone in the same words, so nothing is announced (§4).
    assert ru("voice.code_entry_short") in call.text
    [row] = await outbox_rows(settings)
    assert (row.status, row.reason, row.error_code) == ("failed", "gave_up", "http_503")
    proxy.default = "forward"
    await call.press("*")
    await call.press("2")
    assert call.verbs()[-1] == "Hangup"
    await call.hang_up()  # the code call is placed once the caller hung up
    # Exactly one request for each: the SMS was not retried, the call was placed once.
    assert len(proxy.creates("Messages.json")) == 1
    assert len(proxy.creates("Calls.json")) == 1
    rows = await outbox_rows(settings)
    assert [(r.purpose, r.status) for r in rows] == [("code", "failed"), ("code_call", "sent")]


async def test_a_texter_whose_code_sms_was_refused_is_offered_the_call(
    gateway_behind_proxy: tuple[Twilio, Settings], proxy: FaultProxy
) -> None:
    twilio, settings = gateway_behind_proxy
    proxy.plan = ["400:21610"]
    phone = Phone(twilio, MOBILE)
    await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    # Recorded, not announced (§4): the request's reply already offered the call to everyone.
    assert await phone.text("123456") == [ru("sms.reply_code_wrong")]
    [row] = await outbox_rows(settings)
    assert (row.status, row.reason, row.error_code) == ("failed", "permanent", "21610")
    assert len(proxy.creates()) == 1


async def test_rows_queued_while_twilio_was_down_are_sent_by_the_sweep(
    outbox: Outbox, proxy: FaultProxy
) -> None:
    # Nothing is lost across many messages: each goes exactly once when Twilio returns.
    proxy.default = "503"
    dispatcher = outbox.dispatcher(proxy.url)
    rows = [await outbox.queue("notice") for _ in range(5)]
    assert await dispatcher.drain() == 5
    proxy.default = "forward"
    async with transaction(outbox.sessionmaker) as session:
        await session.execute(update(OutboxMessage).values(next_attempt_at=outbox.clock.now))
    assert await dispatcher.drain() == 5
    assert {(await outbox.row(row_id)).status for row_id in rows} == {"sent"}
    keys = [seen.form["StatusCallback"] for seen in proxy.creates()]
    assert len(keys) == 10 and len(set(keys)) == 5


async def test_the_status_callback_url_with_the_outbox_key_is_accepted(
    gateway_behind_proxy: tuple[Twilio, Settings], proxy: FaultProxy
) -> None:
    twilio, settings = gateway_behind_proxy
    await Phone(twilio, MOBILE).text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    [row] = await outbox_rows(settings)
    assert row.status == "sent" and row.provider_sid
    # Twilio calls back exactly the URL it was given, signed with its query string.
    [seen] = proxy.creates()
    callback = urlsplit(seen.form["StatusCallback"])
    assert parse_qs(callback.query)[OUTBOX_KEY_PARAM] == [row.idempotency_key]
    response = await twilio.post(
        f"{callback.path}?{callback.query}",
        {"MessageSid": row.provider_sid, "MessageStatus": "delivered", "To": MOBILE},
    )
    assert response.status_code == 204
    [row] = await outbox_rows(settings)
    assert (row.status, row.body) == ("delivered", "")


@pytest.mark.parametrize("channel", ["sms", "voice"])
async def test_a_signed_callback_with_the_outbox_key_settles_an_ambiguous_send(
    gateway_behind_proxy: tuple[Twilio, Settings], channel: str
) -> None:
    """The send timed out, so we never learnt Twilio's sid: the key in the URL finds the row."""
    twilio, settings = gateway_behind_proxy
    await Phone(twilio, MOBILE).text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    [row] = await outbox_rows(settings)
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == row.id)
            .values(status="unknown", reason="ambiguous", provider_sid=None)
        )
    await engine.dispose()
    late_sid = ("SM" if channel == "sms" else "CA") + "b" * 32
    fields = (
        {"MessageSid": late_sid, "MessageStatus": "delivered", "To": MOBILE}
        if channel == "sms"
        else {"CallSid": late_sid, "CallStatus": "completed", "To": MOBILE}
    )
    path = "/sms/status" if channel == "sms" else "/ivr/status"
    response = await twilio.post(f"{path}?{OUTBOX_KEY_PARAM}={row.idempotency_key}", fields)
    assert response.status_code == 204
    [row] = await outbox_rows(settings)
    assert row.provider_sid == late_sid
    assert row.status == ("delivered" if channel == "sms" else "completed")


# -- a process killed mid-send, and the next one starting ---------------------------------


async def test_a_restart_after_a_crash_mid_send_resends_nothing_ambiguous_and_loses_nothing(
    settings: Settings, redis: Redis
) -> None:
    await seed_accounts(settings)
    first = RecordingMessenger()
    app = create_app(settings, messenger=first)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            phone = Phone(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), MOBILE)
            await phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    assert len(first.to(MOBILE)) == 1
    # The crash, as the database saw it: the code SMS was marked `sending` and the process
    # died before recording Twilio's answer; a notice had been claimed, not yet sent.
    past = datetime.now(UTC) - timedelta(minutes=5)
    engine = create_engine(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await session.execute(
            update(OutboxMessage).values(
                status="sending", provider_sid=None, claim_token="dead", claimed_until=past
            )
        )
        delivery = Delivery(settings, session, Keyring(settings), lambda: None)
        await delivery.sms(SECOND_MOBILE, "ЕИРЦ: уведомление", "notice")
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.purpose == "notice")
            .values(status="claimed", claim_token="dead", claimed_until=past)
        )
    await engine.dispose()

    # The next process starts: its sweeper settles the dead claims.
    second = RecordingMessenger()
    app = create_app(settings, messenger=second)
    async with app.router.lifespan_context(app):
        await app.state.services.dispatcher.drain()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            phone = Phone(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), MOBILE)
            # The code may or may not have gone: not sent again; nothing is announced.
            assert await phone.text("123456") == [ru("sms.reply_code_wrong")]
    assert second.to(MOBILE) == []
    assert [sent.purpose for sent in second.to(SECOND_MOBILE)] == ["notice"]
    rows = await outbox_rows(settings)
    assert [(row.purpose, row.status, row.reason) for row in rows] == [
        ("code", "unknown", "ambiguous"),
        ("notice", "sent", None),
    ]
