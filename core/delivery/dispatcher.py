"""Sends queued outbox messages after the webhook has answered, and retries what failed.

Requests only queue messages (one INSERT, the same cost whether or not anyone gets a message);
the dispatcher claims each queued row atomically, hands it to the messenger and records the
result, so a slow or failing provider never delays a caller's next prompt.

A row's life (`outbox.status`):

    queued --claimed: request about to go--> sending --> sent
       ^                                        |  \\--> failed   (permanent, gave up)
       |                                        |   \\--> unknown  (ambiguous; or its lease ran out)
       +-------- retry later (5xx, 429, no connection) <--+
    queued --too late--> expired   (a code that could no longer arrive while valid)

Never sent twice. Two dispatchers (processes, the sweeper and a request's drain) cannot both
send a row: the claim is one UPDATE ... WHERE status = 'queued' (and due) that marks the row
`sending` with a random token and a lease, committed before the request leaves; only the one
whose UPDATE changed the row goes on. A process that dies holding a claim leaves the row
`sending` (a request may have reached Twilio: ambiguous, see below). `claimed` (taken, no
request made) is what earlier versions left between two steps; the sweeper still queues such a
row again once its lease runs out.

Idempotency. Twilio's Messages and Calls create endpoints (API 2010) take no idempotency key:
the OpenAPI document lists none (only Payments has an IdempotencyKey), and the twilio client's
`messages.create` / `calls.create` send none. `I-Twilio-Idempotency-Token` is a header Twilio
puts on the webhooks *it* sends, documented for deduplicating those, not a promise about our
create requests. So a request that went out and got no answer (a read timeout, a connection
lost mid-request, a process killed in `sending`) may or may not have created a message, and
only two honest choices remain: send again (maybe twice) or not (maybe never). We never send
again: the row becomes `unknown`, and for a code the resident is offered the other channel at
once (the on_failure hook). Each row has its own random `idempotency_key`, carried in the
StatusCallback URL (`?outbox=<key>`), so if Twilio did accept the message its status callback
still finds the row and records the sid and the real outcome (core.delivery.outbox.record_status).
A 5xx or 429 is an answer that the message was not taken, so those are retried; connection
refused and connect timeouts happened before any byte went out, so they are retried too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import ColumnElement, func, or_, select, true, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.delivery.messenger import (
    AmbiguousDeliveryError,
    DeliveryFailed,
    Messenger,
    TransientDeliveryError,
    current_outbox_key,
)
from core.delivery.outbox import SECRET_PURPOSES, further
from core.delivery.smtp import Mailer, mask_email
from core.kit.phones import mask_phone
from core.models import OutboundChannel, OutboxMessage, OutboxPurpose, OutboxStatus
from core.platform.clock import Clock, utcnow
from core.platform.crypto import Keyring
from core.platform.db import transaction
from core.platform.metrics import OUTBOUND, OUTBOUND_FAILURES, OUTBOUND_RETRIES, OUTBOX_PENDING
from core.platform.settings import Settings

log = structlog.get_logger(__name__)

BATCH = 50
# Set per request by `dispatch_after_response`: did this request queue anything? A process-wide
# flag would race (another request's drain could clear it before this one commits).
_queued_here: ContextVar[list[bool] | None] = ContextVar("queued_here", default=None)
OnFailure = Callable[[AsyncSession, OutboxMessage], Awaitable[None]]

# random.uniform's shape: a number between the two bounds.
Jitter = Callable[[float, float], float]

# Purposes whose resident is waiting for them right now (on the line, or at the phone): the
# first failed attempt already offers the other channel, while the retries go on.
OFFER_AT_FIRST_FAILURE = frozenset({OutboxPurpose.code})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, a cap on attempts, and the claim's lease."""

    max_attempts: int
    base_seconds: float
    max_seconds: float
    lease_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        """The policy the settings describe; the lease outlasts any one Twilio request."""
        return cls(
            max_attempts=settings.outbox_max_attempts,
            base_seconds=settings.outbox_retry_base_seconds,
            max_seconds=settings.outbox_retry_max_seconds,
            # An SMTP conversation is up to six commands (connect ... DATA), each bounded.
            lease_seconds=max(
                settings.outbox_lease_seconds,
                2 * settings.twilio_timeout_seconds,
                6 * settings.smtp_timeout_seconds if settings.smtp_url else 0,
            ),
        )

    def ceiling(self, attempt: int) -> float:
        """The longest wait after the `attempt`-th request failed: base * 2^(attempt-1), capped."""
        return min(self.max_seconds, self.base_seconds * 2.0 ** min(attempt - 1, 32))

    def delay(self, attempt: int, jitter: Jitter, retry_after: float | None = None) -> float:
        """The wait before the next request ("full jitter"), at least what Retry-After asked."""
        wait = float(jitter(0.0, self.ceiling(attempt)))
        if retry_after is not None:
            wait = max(wait, retry_after)
        return wait


# Drains one process runs at once (see `Dispatcher.drain`).
MAX_DRAINS = 4


class Dispatcher:
    """Sends what requests queued; any number of processes may run one (claims are atomic)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        messenger: Messenger,
        keyring: Keyring,
        on_failure: OnFailure,
        policy: RetryPolicy,
        *,
        clock: Clock = utcnow,
        jitter: Jitter = random.uniform,
        mailer: Mailer | None = None,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._messenger = messenger
        # Without a mailer (no GATEWAY_SMTP_URL) e-mails are left in the outbox, untouched.
        self._mailer = mailer
        self._keyring = keyring
        self._on_failure = on_failure
        self.policy = policy
        self._clock = clock
        self._jitter = jitter
        self._stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # Set when a retry was scheduled: the sweeper recomputes when to wake.
        self._rescheduled = asyncio.Event()
        # A few drains at a time per process (one slow Twilio request must not hold up every
        # other message); a request that finds them all busy asks them for one more round
        # instead of starting its own: dozens of drains would only fight over the same rows
        # and the connection pool.
        self._drains = 0
        self._drain_again = False

    def __repr__(self) -> str:
        return "Dispatcher(...)"

    @staticmethod
    def track_request() -> list[bool]:
        """Start tracking whether the current request queues a message."""
        flag = [False]
        _queued_here.set(flag)
        return flag

    def wake(self) -> None:
        """A row was queued (or re-queued) to fall due later: the sweeper recomputes its nap."""
        self._rescheduled.set()

    def notify(self) -> None:
        """The current request queued something: it is sent once the response is out."""
        flag = _queued_here.get()
        if flag is not None:
            flag[0] = True

    # -- the loop ---------------------------------------------------------------------------

    async def drain(self) -> int:
        """Send every due SMS and call once; returns how many this call handled.

        When this process already runs `MAX_DRAINS` drains, one of them goes round once more
        (and picks up what the caller queued) and this call returns 0 at once.
        """
        if self._drains >= MAX_DRAINS:
            self._drain_again = True
            return 0
        self._drains += 1
        try:
            handled = 0
            while True:
                self._drain_again = False
                handled += await self._drain_once()
                if not self._drain_again or self._stopping:
                    return handled
        finally:
            self._drains -= 1

    async def _drain_once(self) -> int:
        """One pass over the due rows.

        A row that fails and is queued again is not tried twice in one pass, however short its
        jittered wait: the next drain (the sweeper) picks it up when it is due. The first read
        also looks for claims whose lease ran out; only when there are some does a write follow.
        """
        handled = 0
        seen: set[int] = set()
        look_for_stale = True
        while not self._stopping:
            now = self._clock()
            limit = BATCH + len(seen)
            async with self._sessionmaker() as session:
                stale = look_for_stale and await self._any_stale(session, now)
                due = (
                    await session.scalars(
                        select(OutboxMessage.id)
                        .where(OutboxMessage.status == OutboxStatus.queued, self._ours(), _due(now))
                        .order_by(OutboxMessage.id)
                        .limit(limit)
                    )
                ).all()
            look_for_stale = False
            if stale:
                await self.release_stale_claims()
                continue  # the released rows are queued again: read once more
            ids = [message_id for message_id in due if message_id not in seen]
            for message_id in ids:
                if self._stopping:
                    break
                seen.add(message_id)
                handled += await self._guarded_send(message_id)
            if not ids or len(due) < limit:
                # Everything due was in this read. A row a request queued meanwhile comes with
                # its own drain (or `drain_again`); another process's, with that process's.
                return handled
        return handled

    @staticmethod
    async def _any_stale(session: AsyncSession, now: datetime) -> bool:
        """Whether a claim's lease ran out (a read: no write lock unless there is work)."""
        return (
            await session.scalar(
                select(OutboxMessage.id)
                .where(
                    OutboxMessage.status.in_((OutboxStatus.claimed, OutboxStatus.sending)),
                    OutboxMessage.claimed_until < now,
                )
                .limit(1)
            )
        ) is not None

    @property
    def busy(self) -> bool:
        """Whether a drain is going round or a send is in flight in this process."""
        return self._drains > 0 or self._in_flight > 0

    async def seconds_until_due(self) -> float | None:
        """How long until the next queued row is due (0: now); None when nothing waits."""
        async with self._sessionmaker() as session:
            waiting, earliest = (
                await session.execute(
                    select(func.count(), func.min(OutboxMessage.next_attempt_at)).where(
                        OutboxMessage.status.in_(
                            (OutboxStatus.queued, OutboxStatus.claimed, OutboxStatus.sending)
                        ),
                        self._ours(),
                    )
                )
            ).one()
        OUTBOX_PENDING.set(int(waiting or 0))
        if not waiting:
            return None
        if earliest is None:
            return 0.0
        return max(0.0, (earliest - self._clock()).total_seconds())

    def _ours(self) -> ColumnElement[bool]:
        """The rows this dispatcher sends: e-mails only when it has a mailer."""
        if self._mailer is None:
            return OutboxMessage.channel != OutboundChannel.email
        return true()

    @property
    def stopping(self) -> bool:
        """Whether `close` was called: no more rows are claimed."""
        return self._stopping

    async def nap(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until this process schedules a retry (the sweeper's wait)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._rescheduled.wait(), timeout=seconds)
        # Once closing, the wake-up stays set: every napper (sweeper, cabinet settler) ends.
        if not self._stopping:
            self._rescheduled.clear()

    async def close(self, grace_seconds: float) -> bool:
        """Stop claiming rows and wait (bounded) for the sends in flight; True if all finished.

        Rows not yet claimed stay queued for the next process. A send still in flight when the
        grace runs out is left `sending`, and its lease decides later (ambiguous: not resent).
        """
        self._stopping = True
        self._rescheduled.set()  # wake the sweeper, so that it sees `stopping` and ends
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=grace_seconds)
        except TimeoutError:
            log.warning("outbound.shutdown_with_sends_in_flight", sends=self._in_flight)
            return False
        return True

    # -- one row ----------------------------------------------------------------------------

    async def _guarded_send(self, message_id: int) -> int:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._send(message_id)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _send(self, message_id: int) -> int:
        token = secrets.token_hex(16)
        now = self._clock()
        # Claimed and marked `sending` in one committed UPDATE, before any request may leave:
        # only the dispatcher whose UPDATE changed the row goes on (see the module note).
        async with transaction(self._sessionmaker) as session:
            claimed = (
                await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.id == message_id,
                        OutboxMessage.status == OutboxStatus.queued,
                        _due(now),
                        _in_time(now),
                    )
                    .values(
                        status=OutboxStatus.sending,
                        claim_token=token,
                        claimed_until=now + timedelta(seconds=self.policy.lease_seconds),
                        attempts=OutboxMessage.attempts + 1,
                        idempotency_key=func.coalesce(
                            OutboxMessage.idempotency_key, secrets.token_hex(16)
                        ),
                    )
                    .returning(
                        OutboxMessage.channel,
                        OutboxMessage.purpose,
                        OutboxMessage.to_number,
                        OutboxMessage.url,
                        OutboxMessage.idempotency_key,
                        OutboxMessage.body,
                    )
                    .execution_options(synchronize_session=False)
                )
            ).first()
        if claimed is None:
            return await self._expire_if_late(message_id, now)
        channel, purpose, to, url, key, sealed = claimed
        body = self._keyring.unseal(sealed) or "" if sealed else ""
        result: str | DeliveryFailed
        marker = current_outbox_key.set(key)
        try:
            if channel is OutboundChannel.call:
                result = await self._messenger.place_call(to=to, url=url or "", purpose=purpose)
            elif channel is OutboundChannel.email:
                assert self._mailer is not None  # rows are only claimed with a mailer
                result = await self._mailer.send_email(to=to, body=body, purpose=purpose)
            else:
                result = await self._messenger.send_sms(to=to, body=body, purpose=purpose)
        except DeliveryFailed as exc:
            result = exc
        finally:
            current_outbox_key.reset(marker)
        async with transaction(self._sessionmaker) as session:
            if isinstance(result, str) and await self._sent(session, message_id, channel, result):
                _count_sent(channel, purpose, to)
                return 1
            row = await session.get(OutboxMessage, message_id)
            if row is None:
                return 1
            await self._settle(session, row, token, result)
        return 1

    async def _sent(
        self, session: AsyncSession, message_id: int, channel: OutboundChannel, sid: str
    ) -> bool:
        """Record a send the provider took, if the row is still ours to settle (one UPDATE).

        False when it is not `sending` any more (a status callback got further, or another
        sweeper judged the lease lost): `_settle` then weighs what stands.
        """
        values: dict[str, object] = {
            "status": OutboxStatus.sent,
            "provider_sid": sid,
            "reason": None,
            "next_attempt_at": None,
            "claim_token": None,
            "claimed_until": None,
        }
        if self._drops_text(channel):
            values["body"] = ""
        done = await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id, OutboxMessage.status == OutboxStatus.sending)
            .values(values)
            .execution_options(synchronize_session=False)
        )
        return bool(getattr(done, "rowcount", 0))

    def _drops_text(self, channel: OutboundChannel) -> bool:
        """Whether a sent message's text is dropped: handed over, the provider has it now, and
        ours would only be a liability (the outbox messenger keeps it: it is the record)."""
        return channel is OutboundChannel.email or not self._messenger.keeps_messages

    async def _expire_if_late(self, message_id: int, now: datetime) -> int:
        """A queued row whose time ran out (`send_before`) is given up, never sent; 1 if so.

        Otherwise the row was not ours to take (another dispatcher has it, or it is not due).
        """
        async with transaction(self._sessionmaker) as session:
            taken = await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.id == message_id,
                    OutboxMessage.status == OutboxStatus.queued,
                    _due(now),
                    ~_in_time(now),
                )
                .values(claim_token=secrets.token_hex(16))
                .execution_options(synchronize_session=False)
            )
            if not getattr(taken, "rowcount", 0):
                return 0
            row = await session.get(OutboxMessage, message_id)
            assert row is not None  # the UPDATE above holds it for this transaction
            await self._give_up(session, row, OutboxStatus.expired, "expired")
        return 1

    async def _settle(
        self, session: AsyncSession, row: OutboxMessage, token: str, result: str | DeliveryFailed
    ) -> None:
        """Record what the request came to."""
        mine = row.claim_token == token
        if isinstance(result, str):
            # Sent. Even if our lease ran out meanwhile, the sid is the truth: record it. A status
            # callback may have beaten this answer here ("delivered"): that state stands.
            row.status, row.provider_sid, row.reason = (
                further(row.status, OutboxStatus.sent),
                result,
                None,
            )
            row.next_attempt_at = None
            _release(row)
            if self._drops_text(row.channel):
                row.body = ""
            _count_sent(row.channel, row.purpose, row.to_number)
            return
        if not mine or row.status is not OutboxStatus.sending:
            # The lease ran out and the row was settled elsewhere (or a status callback, via
            # the key in its URL, already told us the outcome): that record stands.
            log.warning("outbound.claim_lost", purpose=row.purpose)
            return
        row.error_code = result.error_code
        if isinstance(result, AmbiguousDeliveryError):
            await self._give_up(session, row, OutboxStatus.unknown, "ambiguous")
            return
        if not isinstance(result, TransientDeliveryError):
            await self._give_up(session, row, OutboxStatus.failed, "permanent")
            return
        if row.attempts >= self.policy.max_attempts:
            await self._give_up(session, row, OutboxStatus.failed, "gave_up")
            return
        wait = self.policy.delay(row.attempts, self._jitter, result.retry_after)
        due = self._clock() + timedelta(seconds=wait)
        if row.send_before is not None and due >= row.send_before:
            # The next try would come too late for the code to arrive while valid.
            await self._give_up(session, row, OutboxStatus.expired, "expired")
            return
        row.status, row.reason, row.next_attempt_at = OutboxStatus.queued, "retrying", due
        _release(row)
        self._rescheduled.set()
        error_kind = _error_kind(result.error_code)
        OUTBOUND_RETRIES.labels(channel=row.channel, purpose=row.purpose, error=error_kind).inc()
        log.warning(
            "outbound.retry_scheduled",
            to=_masked_to(row),
            purpose=row.purpose,
            attempt=row.attempts,
            error=result.error_code,
            wait_seconds=round(wait, 3),
        )
        if row.attempts == 1 and row.purpose in OFFER_AT_FIRST_FAILURE:
            # The resident is waiting now: say so and offer the other channel at once; the
            # message is still retried (it may yet arrive, and the code is still valid then).
            await self._on_failure(session, row)

    async def _give_up(
        self, session: AsyncSession, row: OutboxMessage, status: OutboxStatus, reason: str
    ) -> None:
        """This row will not be sent (again): record why and tell the hook, once."""
        # A row still marked "retrying" failed before, and a waiting resident heard then.
        already_offered = row.purpose in OFFER_AT_FIRST_FAILURE and row.reason == "retrying"
        row.status, row.reason, row.next_attempt_at = status, reason, None
        _release(row)
        if row.purpose in SECRET_PURPOSES:
            row.body = ""  # it will not be sent by us: keep no secret at rest
        OUTBOUND.labels(channel=row.channel, purpose=row.purpose, result=status).inc()
        OUTBOUND_FAILURES.labels(channel=row.channel, purpose=row.purpose, reason=reason).inc()
        log.warning(
            "outbound.failed",
            to=_masked_to(row),
            purpose=row.purpose,
            reason=reason,
            error=row.error_code,
            attempts=row.attempts,
        )
        if not already_offered:
            await self._on_failure(session, row)

    # -- claims of dead processes -----------------------------------------------------------

    async def release_stale_claims(self) -> int:
        """Settle the rows whose claim's lease ran out (its process died or hung).

        `claimed`: no request was made, so the row is simply queued again. `sending`: a request
        may have reached Twilio, so it is ambiguous and is not sent again (see the module note).
        """
        now = self._clock()
        async with transaction(self._sessionmaker) as session:
            requeued = await session.execute(
                update(OutboxMessage)
                .where(
                    OutboxMessage.status == OutboxStatus.claimed, OutboxMessage.claimed_until < now
                )
                .values(status=OutboxStatus.queued, claim_token=None, claimed_until=None)
            )
            count = int(getattr(requeued, "rowcount", 0) or 0)
            stale = list(
                (
                    await session.scalars(
                        select(OutboxMessage.id).where(
                            OutboxMessage.status == OutboxStatus.sending,
                            OutboxMessage.claimed_until < now,
                        )
                    )
                ).all()
            )
        for message_id in stale:
            async with transaction(self._sessionmaker) as session:
                taken = await session.execute(
                    update(OutboxMessage)
                    .where(
                        OutboxMessage.id == message_id,
                        OutboxMessage.status == OutboxStatus.sending,
                        OutboxMessage.claimed_until < now,
                    )
                    .values(claimed_until=None)
                )
                if not getattr(taken, "rowcount", 0):
                    continue  # another sweeper settled it
                row = await session.get(OutboxMessage, message_id)
                assert row is not None
                row.error_code = "lease"
                await self._give_up(session, row, OutboxStatus.unknown, "ambiguous")
                count += 1
        if count:
            log.warning("outbound.stale_claims", rows=count)
        return count


def _due(now: datetime) -> ColumnElement[bool]:
    return or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at <= now)


def _in_time(now: datetime) -> ColumnElement[bool]:
    """Still worth sending: a code must never arrive after it stopped being valid."""
    return or_(OutboxMessage.send_before.is_(None), OutboxMessage.send_before > now)


def _count_sent(channel: OutboundChannel, purpose: OutboxPurpose, to: str) -> None:
    OUTBOUND.labels(channel=channel, purpose=purpose, result="sent").inc()
    log.info("outbound.sent", to=_masked(channel, to), purpose=purpose)


def _masked_to(row: OutboxMessage) -> str:
    return _masked(row.channel, row.to_number)


def _masked(channel: OutboundChannel, to: str) -> str:
    if channel is OutboundChannel.email:
        return mask_email(to)
    return mask_phone(to)


def _error_kind(error_code: str) -> str:
    """A metric label from an error code: `http_503` -> `http_5xx`, `smtp_451` -> `smtp_4xx`."""
    for prefix in ("http_5", "smtp_4", "smtp_5"):
        if error_code.startswith(prefix) and error_code[len(prefix) :].isdigit():
            return f"{prefix}xx"
    return error_code


def _release(row: OutboxMessage) -> None:
    row.claim_token, row.claimed_until = None, None


__all__ = ["Dispatcher", "RetryPolicy"]
