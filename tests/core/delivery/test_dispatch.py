"""The dispatcher: retries with backoff and jitter, atomic claims, leases, codes never late.

Time and randomness are injected (a clock the test moves, a jitter that records its bounds):
nothing here sleeps for real.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.delivery.dispatcher import MAX_DRAINS, Dispatcher, RetryPolicy
from core.delivery.messenger import (
    AmbiguousDeliveryError,
    DeliveryFailed,
    TransientDeliveryError,
    current_outbox_key,
)
from core.delivery.outbox import Delivery, record_status
from core.models import OutboxMessage
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import upgrade_database
from core.platform.settings import Settings
from tests.conftest import MOBILE, SECOND_MOBILE

T0 = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
Outcome = DeliveryFailed | None


@dataclass
class ScriptedMessenger:
    """A Messenger whose sends fail as scripted (None: success), and which can be held."""

    outcomes: list[Outcome] = field(default_factory=list)
    sent: list[tuple[str, str, str | None]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    keeps_messages: bool = False
    # Set once a send is under way.
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def _send(self, channel: str, to: str) -> str:
        # What it was asked to send, with the outbox key the StatusCallback URL would carry.
        self.sent.append((channel, to, current_outbox_key.get()))
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return f"{'CA' if channel == 'call' else 'SM'}{len(self.sent):032d}"

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        """Send (or fail) one SMS."""
        return await self._send("sms", to)

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        """Place (or fail) one call."""
        return await self._send("call", to)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Jitter:
    """Full jitter with the random part fixed: returns `fraction` of the ceiling, records both."""

    fraction: float = 0.5
    bounds: list[tuple[float, float]] = field(default_factory=list)

    def __call__(self, low: float, high: float) -> float:
        self.bounds.append((low, high))
        return low + (high - low) * self.fraction


@dataclass
class Env:
    settings: Settings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    keyring: Keyring
    clock: Clock
    jitter: Jitter
    failures: list[tuple[int, str | None]]

    def dispatcher(self, messenger: ScriptedMessenger, **policy: float) -> Dispatcher:
        async def on_failure(session: AsyncSession, row: OutboxMessage) -> None:
            self.failures.append((row.id, row.reason))

        values = {
            "max_attempts": 4,
            "base_seconds": 2.0,
            "max_seconds": 10.0,
            "lease_seconds": 60.0,
        } | policy
        return Dispatcher(
            self.sessionmaker,
            messenger,
            self.keyring,
            on_failure,
            RetryPolicy(
                max_attempts=int(values["max_attempts"]),
                base_seconds=values["base_seconds"],
                max_seconds=values["max_seconds"],
                lease_seconds=values["lease_seconds"],
            ),
            clock=self.clock,
            jitter=self.jitter,
        )

    async def queue(self, purpose: str = "code", to: str = MOBILE, channel: str = "sms") -> int:
        async with transaction(self.sessionmaker) as session:
            delivery = Delivery(self.settings, session, self.keyring, lambda: None)
            if channel == "call":
                await delivery.call(to, "https://gw.example/ivr/verify?a=x", purpose)
            else:
                await delivery.sms(to, "ЕИРЦ: код 123456", purpose, attempt_ref="attempt-1")
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

    async def set(self, row_id: int, **values: object) -> None:
        async with transaction(self.sessionmaker) as session:
            await session.execute(
                update(OutboxMessage).where(OutboxMessage.id == row_id).values(**values)
            )


async def make_env(settings: Settings) -> Env:
    await upgrade_database(settings.database_url)
    engine = create_engine(settings.database_url)
    return Env(
        settings,
        engine,
        create_sessionmaker(engine),
        Keyring(settings),
        Clock(),
        Jitter(),
        [],
    )


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    environment = await make_env(settings)
    yield environment
    await environment.engine.dispose()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"channel": "sms", **labels}) or 0.0


def transient(status: int = 503, retry_after: float | None = None) -> TransientDeliveryError:
    return TransientDeliveryError("down", error_code=f"http_{status}", retry_after=retry_after)


# -- retries ------------------------------------------------------------------------------


async def test_backoff_grows_exponentially_with_full_jitter_up_to_the_cap(env: Env) -> None:
    messenger = ScriptedMessenger([transient() for _ in range(10)])
    dispatcher = env.dispatcher(messenger, max_attempts=5)
    row_id = await env.queue("notice")
    waits = []
    for _ in range(4):
        assert await dispatcher.drain() == 1
        row = await env.row(row_id)
        assert row.status == "queued" and row.reason == "retrying" and row.next_attempt_at
        waits.append((row.next_attempt_at - env.clock.now).total_seconds())
        # Not due yet: a drain now sends nothing.
        assert await dispatcher.drain() == 0
        env.clock.advance(waits[-1])
    # Full jitter: a random wait between 0 and base * 2^(n-1), capped at max_seconds.
    assert env.jitter.bounds == [(0.0, 2.0), (0.0, 4.0), (0.0, 8.0), (0.0, 10.0)]
    assert waits == [1.0, 2.0, 4.0, 5.0]
    assert len(messenger.sent) == 4 and env.failures == []

    # The fifth request fails too: the cap is reached, the row fails, the hook hears it once.
    assert await dispatcher.drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.attempts, row.error_code) == (
        "failed",
        "gave_up",
        5,
        "http_503",
    )
    assert env.failures == [(row_id, "gave_up")]
    env.clock.advance(3600)
    assert await dispatcher.drain() == 0 and len(messenger.sent) == 5


async def test_the_jitter_is_random_by_default() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=2.0, max_seconds=60.0, lease_seconds=60.0)
    waits = {policy.delay(3, random.Random(seed).uniform) for seed in range(20)}
    assert len(waits) == 20 and all(0.0 <= wait <= 8.0 for wait in waits)


async def test_retry_after_on_429_is_honoured(env: Env) -> None:
    messenger = ScriptedMessenger([transient(429, retry_after=30.0)])
    dispatcher = env.dispatcher(messenger)
    row_id = await env.queue("notice")
    await dispatcher.drain()
    row = await env.row(row_id)
    assert row.next_attempt_at == T0 + timedelta(seconds=30)
    env.clock.advance(29)
    assert await dispatcher.drain() == 0
    env.clock.advance(1)
    assert await dispatcher.drain() == 1
    assert (await env.row(row_id)).status == "sent" and len(messenger.sent) == 2


@pytest.mark.parametrize("code", ["21211", "21610"])
async def test_a_permanent_error_fails_at_once(env: Env, code: str) -> None:
    messenger = ScriptedMessenger([DeliveryFailed("refused", error_code=code)])
    dispatcher = env.dispatcher(messenger)
    row_id = await env.queue("code")
    before = metric("gateway_outbound_failures_total", purpose="code", reason="permanent")
    assert await dispatcher.drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code, row.attempts) == (
        "failed",
        "permanent",
        code,
        1,
    )
    # The code will not be sent by us: no secret kept at rest; the resident is offered a call.
    assert row.body == "" and env.failures == [(row_id, "permanent")]
    after = metric("gateway_outbound_failures_total", purpose="code", reason="permanent")
    assert after == before + 1
    env.clock.advance(3600)
    assert await dispatcher.drain() == 0 and len(messenger.sent) == 1


async def test_a_code_is_offered_on_the_other_channel_at_its_first_failure_and_retried(
    env: Env,
) -> None:
    messenger = ScriptedMessenger([transient(), transient()])
    dispatcher = env.dispatcher(messenger)
    row_id = await env.queue("code")
    before = metric("gateway_outbound_retries_total", purpose="code", error="http_5xx")
    await dispatcher.drain()
    # The resident is waiting: offered the call at once, while the SMS is retried.
    assert env.failures == [(row_id, "retrying")]
    for _ in range(2):
        env.clock.advance(10)
        await dispatcher.drain()
    row = await env.row(row_id)
    assert row.status == "sent" and row.provider_sid and row.body == ""
    assert env.failures == [(row_id, "retrying")]  # offered once, not again
    after = metric("gateway_outbound_retries_total", purpose="code", error="http_5xx")
    assert after == before + 2


# -- codes are never late -----------------------------------------------------------------


async def test_a_code_that_expired_before_it_could_be_sent_is_not_sent(env: Env) -> None:
    messenger = ScriptedMessenger()
    dispatcher = env.dispatcher(messenger)
    row_id = await env.queue("code")
    row = await env.row(row_id)
    # Queued with a deadline: its validity less the margin it needs to arrive.
    ttl = env.settings.code_ttl_seconds - env.settings.outbox_code_send_margin_seconds
    assert row.send_before is not None
    assert abs((row.send_before - row.created_at).total_seconds() - ttl) < 5
    env.clock.now = row.send_before
    assert await dispatcher.drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.body) == ("expired", "expired", "")
    assert messenger.sent == [] and env.failures == [(row_id, "expired")]


async def test_a_retry_that_would_come_too_late_expires_the_code(env: Env) -> None:
    messenger = ScriptedMessenger([transient(429, retry_after=3600.0)])
    dispatcher = env.dispatcher(messenger)
    row_id = await env.queue("code")
    row = await env.row(row_id)
    assert row.send_before is not None
    env.clock.now = row.send_before - timedelta(seconds=100)
    await dispatcher.drain()
    row = await env.row(row_id)
    assert (row.status, row.reason, row.attempts) == ("expired", "expired", 1)
    assert len(messenger.sent) == 1 and env.failures == [(row_id, "expired")]


# -- never twice ------------------------------------------------------------------------------


async def test_an_ambiguous_send_is_never_repeated_and_the_callback_closes_the_loop(
    env: Env,
) -> None:
    messenger = ScriptedMessenger([AmbiguousDeliveryError("no answer", error_code="timeout")])
    dispatcher = env.dispatcher(messenger)
    row_id = await env.queue("code")
    await dispatcher.drain()
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("unknown", "ambiguous", "timeout")
    assert env.failures == [(row_id, "ambiguous")]
    env.clock.advance(3600)
    assert await dispatcher.drain() == 0 and len(messenger.sent) == 1
    # The request carried the row's key (it rides in the StatusCallback URL)...
    [(_, _, key)] = messenger.sent
    assert key and key == row.idempotency_key
    # ...so when Twilio did take it, its status callback finds the row without knowing the sid.
    async with transaction(env.sessionmaker) as session:
        found = await record_status(session, "SM" + "f" * 32, "delivered", None, outbox_key=key)
        assert found is not None and found.id == row_id
    row = await env.row(row_id)
    assert (row.status, row.provider_sid) == ("delivered", "SM" + "f" * 32)


async def test_a_provider_queued_callback_never_requeues_a_row(env: Env) -> None:
    messenger = ScriptedMessenger()
    dispatcher = env.dispatcher(messenger)
    row_id = await env.queue("notice")
    await dispatcher.drain()
    row = await env.row(row_id)
    assert row.provider_sid
    async with transaction(env.sessionmaker) as session:
        await record_status(session, row.provider_sid, "queued", None)
    assert (await env.row(row_id)).status == "sent"
    assert await dispatcher.drain() == 0 and len(messenger.sent) == 1


async def test_every_row_has_its_own_key(env: Env) -> None:
    keys = {(await env.row(await env.queue("notice"))).idempotency_key for _ in range(5)}
    assert len(keys) == 5 and None not in keys


@pytest.fixture(params=["sqlite", "postgresql"])
async def shared_env(
    request: pytest.FixtureRequest, settings: Settings, tmp_path: Path
) -> AsyncIterator[Env]:
    """An environment on SQLite or on a real PostgreSQL (emptied first)."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        engine = create_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
        await engine.dispose()
        settings = settings.model_copy(update={"database_url": url})
    environment = await make_env(settings)
    yield environment
    await environment.engine.dispose()


async def test_two_dispatchers_never_send_the_same_row(shared_env: Env) -> None:
    env = shared_env
    gate = asyncio.Event()
    first, second = ScriptedMessenger(gate=gate), ScriptedMessenger(gate=gate)
    rows = [await env.queue("notice", to=MOBILE if n % 2 else SECOND_MOBILE) for n in range(12)]
    # Two dispatchers (think: two processes, or the sweeper and a request) drain at once; the
    # sends are held open so that both are busy with the same batch at the same time.
    drains = asyncio.gather(env.dispatcher(first).drain(), env.dispatcher(second).drain())
    await asyncio.wait_for(first.started.wait(), 30)
    await asyncio.wait_for(second.started.wait(), 30)
    gate.set()
    handled = await drains
    assert sum(handled) == len(rows)
    # Every row sent exactly once: as many requests as rows, each for a different row's key.
    keys = [key for _, _, key in first.sent + second.sent]
    assert len(keys) == len(rows) and len(set(keys)) == len(rows)
    assert {(await env.row(row_id)).status for row_id in rows} == {"sent"}


# -- a process killed mid-send --------------------------------------------------------------


async def test_a_claim_left_by_a_dead_process_is_requeued_after_its_lease(env: Env) -> None:
    messenger = ScriptedMessenger()
    dispatcher = env.dispatcher(messenger, lease_seconds=60)
    row_id = await env.queue("code")
    # The process claimed the row and died before any request went out.
    await env.set(
        row_id, status="claimed", claim_token="dead", claimed_until=T0 + timedelta(seconds=60)
    )
    assert await dispatcher.drain() == 0  # the lease still holds
    env.clock.advance(61)
    assert await dispatcher.drain() == 1
    row = await env.row(row_id)
    assert (row.status, row.attempts) == ("sent", 1) and len(messenger.sent) == 1
    assert env.failures == []


async def test_a_send_left_in_flight_by_a_dead_process_is_not_repeated(env: Env) -> None:
    messenger = ScriptedMessenger()
    dispatcher = env.dispatcher(messenger, lease_seconds=60)
    row_id = await env.queue("code")
    # The process marked the row `sending` (its request may have reached Twilio) and died.
    await env.set(
        row_id,
        status="sending",
        attempts=1,
        claim_token="dead",
        claimed_until=T0 + timedelta(seconds=60),
    )
    assert await dispatcher.drain() == 0
    assert (await env.row(row_id)).status == "sending"
    env.clock.advance(61)
    assert await dispatcher.release_stale_claims() == 1
    row = await env.row(row_id)
    assert (row.status, row.reason, row.error_code) == ("unknown", "ambiguous", "lease")
    assert row.body == "" and messenger.sent == []
    # The resident is offered the other channel instead (not offered before: attempt 1).
    assert env.failures == [(row_id, "ambiguous")]
    assert await dispatcher.release_stale_claims() == 0
    assert await dispatcher.drain() == 0 and messenger.sent == []


async def test_a_late_result_after_a_lost_lease_keeps_the_sid(env: Env) -> None:
    gate = asyncio.Event()
    messenger = ScriptedMessenger(gate=gate)
    slow = env.dispatcher(messenger, lease_seconds=60)
    row_id = await env.queue("notice")
    draining = asyncio.create_task(slow.drain())
    await asyncio.wait_for(messenger.started.wait(), 30)
    # Meanwhile another sweeper decides the lease ran out: ambiguous, not resent.
    env.clock.advance(61)
    other = ScriptedMessenger()
    assert await env.dispatcher(other).release_stale_claims() == 1
    gate.set()
    await draining
    row = await env.row(row_id)
    # The message did go: the sid is recorded, and nothing was sent twice.
    assert row.status == "sent" and row.provider_sid and other.sent == []


async def test_the_claim_is_committed_as_sending_before_the_request_leaves(env: Env) -> None:
    gate = asyncio.Event()
    messenger = ScriptedMessenger(gate=gate)
    row_id = await env.queue("code")
    draining = asyncio.create_task(env.dispatcher(messenger).drain())
    await asyncio.wait_for(messenger.started.wait(), 30)
    # Read from another connection while the request is held: the claim is already durable.
    row = await env.row(row_id)
    assert (row.status, row.attempts) == ("sending", 1)
    assert row.claim_token and row.claimed_until and row.idempotency_key
    assert messenger.sent == [("sms", MOBILE, row.idempotency_key)]
    gate.set()
    assert await draining == 1
    row = await env.row(row_id)
    assert (row.status, row.claim_token, row.claimed_until) == ("sent", None, None)


async def test_a_drain_with_nothing_stale_writes_nothing_but_its_sends(env: Env) -> None:
    # Stale claims are looked for with a read; the write (and SQLite's one write lock) comes
    # only when there is one to settle, so idle drains never queue behind webhooks' writes.
    writes: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in {"INSERT", "UPDATE", "DELETE"}:
            writes.append(statement.split(None, 1)[0])

    event.listen(env.engine.sync_engine, "before_cursor_execute", record)
    try:
        messenger = ScriptedMessenger()
        dispatcher = env.dispatcher(messenger)
        assert await dispatcher.drain() == 0
        assert writes == []
        await env.queue("notice")
        writes.clear()
        assert await dispatcher.drain() == 1
        # One UPDATE claims the row (marked sending), one records the sid.
        assert writes == ["UPDATE", "UPDATE"]
    finally:
        event.remove(env.engine.sync_engine, "before_cursor_execute", record)


# -- shutdown -------------------------------------------------------------------------------


async def test_close_waits_for_the_send_in_flight_and_leaves_the_rest_queued(env: Env) -> None:
    gate = asyncio.Event()
    messenger = ScriptedMessenger(gate=gate)
    dispatcher = env.dispatcher(messenger)
    first, second = await env.queue("notice"), await env.queue("notice", to=SECOND_MOBILE)
    draining = asyncio.create_task(dispatcher.drain())
    await asyncio.wait_for(messenger.started.wait(), 30)
    closing = asyncio.create_task(dispatcher.close(grace_seconds=30))
    await asyncio.sleep(0)
    assert not closing.done()
    gate.set()
    assert await closing is True
    assert await draining == 1
    assert (await env.row(first)).status == "sent"
    assert (await env.row(second)).status == "queued"  # for the next process
    assert len(messenger.sent) == 1


async def test_close_is_bounded(env: Env) -> None:
    messenger = ScriptedMessenger(gate=asyncio.Event())
    dispatcher = env.dispatcher(messenger)
    await env.queue("notice")
    draining = asyncio.create_task(dispatcher.drain())
    await asyncio.wait_for(messenger.started.wait(), 30)
    assert await dispatcher.close(grace_seconds=0.05) is False
    draining.cancel()
    with pytest.raises(asyncio.CancelledError):
        await draining


def test_the_lease_outlasts_a_twilio_request() -> None:
    settings = Settings(_env_file=None, outbox_lease_seconds=5, twilio_timeout_seconds=10)
    assert RetryPolicy.from_settings(settings).lease_seconds == 20


async def test_the_pending_gauge_counts_what_waits(env: Env) -> None:
    dispatcher = env.dispatcher(ScriptedMessenger([transient()]))
    assert await dispatcher.seconds_until_due() is None
    assert REGISTRY.get_sample_value("gateway_outbox_pending") == 0
    await env.queue("notice")
    await env.queue("notice", to=SECOND_MOBILE)
    assert await dispatcher.seconds_until_due() == 0.0
    assert REGISTRY.get_sample_value("gateway_outbox_pending") == 2
    await dispatcher.drain()  # one fails and waits (half of 2 s), the other is sent
    assert await dispatcher.seconds_until_due() == 1.0
    assert REGISTRY.get_sample_value("gateway_outbox_pending") == 1


async def test_a_scheduled_retry_wakes_the_sweeper(env: Env) -> None:
    dispatcher = env.dispatcher(ScriptedMessenger([transient()]))
    napping = asyncio.create_task(dispatcher.nap(3600))
    await env.queue("notice")
    await dispatcher.drain()
    await asyncio.wait_for(napping, 30)  # woken long before the hour is up


async def test_busy_drains_take_on_what_a_later_request_queued(env: Env) -> None:
    """With every drain slot busy, a request's drain returns at once and a running one sends."""
    gate = asyncio.Event()
    messenger = ScriptedMessenger(gate=gate)
    dispatcher = env.dispatcher(messenger)
    first = [await env.queue(to=f"+7912000000{n}") for n in range(MAX_DRAINS)]
    running = [asyncio.create_task(dispatcher.drain()) for _ in first]

    async def all_slots_held() -> None:
        while len(messenger.sent) < MAX_DRAINS:  # noqa: ASYNC110 - counting, not one event
            await asyncio.sleep(0.01)

    await asyncio.wait_for(all_slots_held(), timeout=10)
    late = await env.queue(to=SECOND_MOBILE)
    assert await dispatcher.drain() == 0  # no fifth drain fighting over the same rows
    gate.set()
    assert sum(await asyncio.gather(*running)) == MAX_DRAINS + 1
    assert {(await env.row(row_id)).status for row_id in [*first, late]} == {"sent"}
    assert sorted(to for _, to, _ in messenger.sent).count(SECOND_MOBILE) == 1


async def test_every_napper_wakes_for_good_once_the_dispatcher_closes(env: Env) -> None:
    """The sweeper and the cabinet settler nap on the same wake-up: one that wakes first must not
    put the other back to sleep for a whole interval (shutdown waited the grace out, 10 s)."""
    dispatcher = env.dispatcher(ScriptedMessenger([]))
    first = asyncio.create_task(dispatcher.nap(3600))
    await asyncio.sleep(0)
    assert await dispatcher.close(1.0)
    await first
    # The second one (busy with a drain when close came) naps after the first cleared the event.
    await asyncio.wait_for(dispatcher.nap(3600), timeout=60)
