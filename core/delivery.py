"""Outbound SMS, calls and e-mail behind one protocol: Twilio REST, or the outbox for demo and dev.

Every outbound message is recorded in the request's own transaction (the outbox table): in outbox
mode the row is the message; with Twilio it is the record status callbacks update.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.config import MessengerKind, Settings
from core.crypto import Keyring
from core.db import utcnow
from core.metrics import OUTBOUND
from core.models import OutboundChannel, OutboxMessage
from core.optout import OptOuts
from core.phones import mask_phone, outbound_allowed

log = structlog.get_logger(__name__)


class DeliveryFailed(RuntimeError):
    """The provider refused the message for good (invalid number, unsubscribed...): not retried.

    `error_code` is the provider's error code or a fixed word ("send", "http_400"): never a
    number, a text or anything else a resident gave us.
    """

    def __init__(self, message: str, *, error_code: str = "send") -> None:
        super().__init__(message)
        self.error_code = error_code[:16]


class TransientDeliveryError(DeliveryFailed):
    """The provider did not take the message, and saying so was certain: 5xx, 429, no connection.

    Safe to send again later; `retry_after` is the provider's Retry-After in seconds, if given.
    """

    def __init__(self, message: str, *, error_code: str, retry_after: float | None = None) -> None:
        super().__init__(message, error_code=error_code)
        self.retry_after = retry_after


class AmbiguousDeliveryError(DeliveryFailed):
    """The request may have reached the provider, and no answer came back (a read timeout).

    Twilio may have accepted the message: sending it again could deliver it twice, so the
    dispatcher never does (see core/dispatch.py for the reasoning).
    """


# The outbox row a send is for. The dispatcher sets it around each messenger call, so that the
# Twilio messenger can name the row in the StatusCallback URL without the Messenger protocol
# (and every fake implementing it) growing a parameter. Asyncio tasks and to_thread copy it.
current_outbox_key: ContextVar[str | None] = ContextVar("current_outbox_key", default=None)
# The query parameter of the StatusCallback URL that carries it.
OUTBOX_KEY_PARAM = "outbox"


class Messenger(Protocol):
    """Sends an SMS or places a call and returns the provider's id (e-mails wait in the outbox)."""

    # True when nothing leaves the building: the outbox row (with its text) is the message.
    keeps_messages: bool

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        """Send one SMS."""
        ...

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        """Place an outbound call whose TwiML is fetched from `url`."""
        ...


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


class OutboxMessenger:
    """Sends nothing: the outbox rows are read by `eirc-gateway outbox` and the phone simulator."""

    keeps_messages = True

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        """An SMS that stays in the outbox."""
        return _sid("SM")

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        """A call that stays in the outbox until the simulator answers it."""
        return _sid("CA")


class TwilioMessenger:
    """Sends through the real Twilio REST client, with status callbacks.

    Every failure is classified for the dispatcher (core/dispatch.py): permanent (4xx other than
    429: DeliveryFailed), certainly not taken (5xx, 429, no connection: TransientDeliveryError),
    or unknown (the request went out and no answer came: AmbiguousDeliveryError).
    """

    keeps_messages = False

    def __init__(self, settings: Settings) -> None:
        from core.twilio_rest import build_twilio_client

        self._settings = settings
        self._client = build_twilio_client(settings)
        base = settings.public_base_url.rstrip("/")
        self._sms_status_url = f"{base}/sms/status"
        self._call_status_url = f"{base}/ivr/status"

    def __repr__(self) -> str:
        return "TwilioMessenger(<client>)"

    @staticmethod
    def _callback(url: str) -> str:
        """The status callback URL, naming the outbox row when the dispatcher sends one."""
        key = current_outbox_key.get()
        return f"{url}?{OUTBOX_KEY_PARAM}={key}" if key else url

    async def send_sms(self, *, to: str, body: str, purpose: str) -> str:
        """Send an SMS from the short number."""
        message = await self._create(
            "SMS",
            self._client.messages.create,
            to=to,
            from_=self._settings.sms_number,
            body=body,
            status_callback=self._callback(self._sms_status_url),
        )
        return str(message.sid)

    async def place_call(self, *, to: str, url: str, purpose: str) -> str:
        """Place a call from the hotline number."""
        call = await self._create(
            "call",
            self._client.calls.create,
            to=to,
            from_=self._settings.hotline_number,
            url=url,
            status_callback=self._callback(self._call_status_url),
        )
        return str(call.sid)

    async def _create(self, what: str, create: Callable[..., Any], **params: object) -> Any:
        from core.twilio_rest import classify_failure

        def in_thread() -> Any:
            try:
                return create(**params)
            except Exception as exc:
                # Read in the same worker thread: the Retry-After of this very response.
                raise classify_failure(what, exc, self._client.http_client) from None

        return await asyncio.to_thread(in_thread)


def build_messenger(settings: Settings) -> Messenger:
    """The messenger the settings ask for."""
    if settings.messenger is MessengerKind.twilio:
        return TwilioMessenger(settings)
    return OutboxMessenger()


# The only SMS that may reach a number that has opted out (§4): the confirmation of its STOP,
# and the notice that a recovery of the account completed (§6.8) — a spoofed STOP must not
# silence the one message that tells a resident someone else got into the cabinet.
OPT_OUT_CONFIRMATION = "optout_confirmation"
RECOVERY_NOTICE = "notice"
DESPITE_OPT_OUT = frozenset({OPT_OUT_CONFIRMATION, RECOVERY_NOTICE})

# A well-formed number that is never on file: withheld messages do the same checks on it.
WITHHELD_PLACEHOLDER = "+79000000000"

FAILED_STATUSES = frozenset({"undelivered", "failed"})
DELIVERED_STATUSES = frozenset({"delivered", "read"})
# Texts that carry a secret: purged once delivered, or once the secret has expired anyway.
SECRET_PURPOSES = frozenset({"code", "password"})
# The status of a held cabinet PUT: outside the dispatcher's "queued", so only the settler sees it.
CABINET_PENDING = "pending"

# Messages that hand a resident a code (the SMS, or the call that speaks one): never late.
CODE_PURPOSES = frozenset({"code", "code_call"})


class Delivery:
    """Policy (allowed countries and lines, opt-outs) and the queue: requests queue, the
    dispatcher sends.

    Every path costs the same: a message that must not go anywhere (no phone on file, unknown
    account, a refused destination, an opt-out) is queued as "withheld" with the same work, so
    timing tells nothing (§6.2), and the caller is told the same as for a send.
    """

    def __init__(
        self,
        settings: Settings,
        session: AsyncSession,
        keyring: Keyring,
        notify: Callable[[], None],
        wake: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._session = session
        self._keyring = keyring
        self._notify = notify
        # Tells the sweeper that a row falls due later (it recomputes when to wake).
        self._wake = wake
        self._allowed = frozenset(settings.allowed_countries)
        self._opt_outs = OptOuts(session)

    def _send_before(self, purpose: str) -> datetime | None:
        """The moment after which this message must no longer go out (None: no limit).

        A code is valid for code_ttl_seconds from now (it was issued in this same request); it
        must reach the phone before that, so it is not sent in the last `margin` seconds. The
        verification call speaks a fresh code but answers a caller waiting now: the same limit.
        """
        now = utcnow()
        if purpose in CODE_PURPOSES:
            ttl = self._settings.code_ttl_seconds
            margin = min(self._settings.outbox_code_send_margin_seconds, ttl // 2)
            return now + timedelta(seconds=ttl - margin)
        if purpose == "password":
            return now + timedelta(hours=self._settings.temp_password_ttl_hours)
        return None

    def allowed(self, e164: str) -> bool:
        """Whether outbound messages may go to this number at all: an allowed country, and an
        ordinary line, never premium rate, shared cost or a non-geographic range (§6.14)."""
        return outbound_allowed(e164, self._allowed)

    async def deliverable(self, e164: str, purpose: str = "password") -> bool:
        """Whether an SMS for `purpose` would be queued for this number (country, opt-out)."""
        if not self.allowed(e164):
            return False
        return purpose == OPT_OUT_CONFIRMATION or not await self._opt_outs.is_opted_out(e164)

    async def _queue(
        self,
        channel: OutboundChannel,
        to: str,
        purpose: str,
        *,
        body: str = "",
        url: str | None = None,
        attempt_ref: str | None = None,
        status: str = "queued",
        not_before: datetime | None = None,
    ) -> None:
        self._session.add(
            OutboxMessage(
                idempotency_key=secrets.token_hex(16),
                send_before=self._send_before(purpose),
                channel=channel,
                to_number=to,
                from_number={
                    OutboundChannel.sms: self._settings.sms_number,
                    OutboundChannel.call: self._settings.hotline_number,
                }.get(channel, ""),
                # Sealed at rest until sent (then dropped) or purged.
                body=self._keyring.seal(body) if body else "",
                url=url,
                purpose=purpose,
                status=status,
                attempt_ref=attempt_ref,
                next_attempt_at=not_before,
            )
        )
        await self._session.flush()
        if status == "queued" and not_before is not None:
            if self._wake is not None:
                self._wake()
        elif status == "queued":
            self._notify()

    async def sms(
        self, to: str, body: str, purpose: str, *, attempt_ref: str | None = None
    ) -> bool:
        """Queue an SMS if policy allows; False when it was withheld."""
        allowed = self.allowed(to)
        # Asked on every path, so that a refusal costs what a send costs.
        opted_out = await self._opt_outs.is_opted_out(to)
        if not allowed:
            log.warning("outbound.refused_destination", to=mask_phone(to), purpose=purpose)
            OUTBOUND.labels(channel="sms", purpose=purpose, result="refused").inc()
        elif opted_out and purpose not in DESPITE_OPT_OUT:
            log.info("outbound.opted_out", to=mask_phone(to), purpose=purpose)
            OUTBOUND.labels(channel="sms", purpose=purpose, result="opted_out").inc()
        else:
            await self._queue(OutboundChannel.sms, to, purpose, body=body, attempt_ref=attempt_ref)
            return True
        await self._queue(OutboundChannel.sms, "", purpose, body=body, status="withheld")
        return False

    async def call(
        self,
        to: str,
        url: str,
        purpose: str,
        *,
        attempt_ref: str | None = None,
        not_before: datetime | None = None,
    ) -> bool:
        """Queue a call if policy allows; False when it was withheld.

        `not_before`: the call is held until then (or until something makes it due sooner:
        core/code_calls.py), and the dispatcher's atomic claim places it once either way.
        """
        if not self.allowed(to):
            log.warning("outbound.refused_destination", to=mask_phone(to), purpose=purpose)
            OUTBOUND.labels(channel="call", purpose=purpose, result="refused").inc()
            await self._queue(OutboundChannel.call, "", purpose, url=url, status="withheld")
            return False
        await self._queue(
            OutboundChannel.call,
            to,
            purpose,
            url=url,
            attempt_ref=attempt_ref,
            not_before=not_before,
        )
        return True

    async def withhold(
        self, channel: OutboundChannel, body: str, purpose: str, *, url: str | None = None
    ) -> bool:
        """Do a send's work for a message that goes nowhere (timing must not tell, §6.2)."""
        self.allowed(WITHHELD_PLACEHOLDER)
        await self._opt_outs.is_opted_out(WITHHELD_PLACEHOLDER)
        await self._queue(channel, "", purpose, body=body, url=url, status="withheld")
        return False

    async def hold_for_cabinet(self, account_number: str, put_body: str, until: datetime) -> None:
        """Keep a PUT whose outcome is unknown, for the cabinet settler to repeat (§11)."""
        self._session.add(
            OutboxMessage(
                idempotency_key=secrets.token_hex(16),
                send_before=until,
                channel=OutboundChannel.cabinet,
                to_number=account_number,
                from_number="",
                # The body holds the password: sealed at rest, blanked once settled.
                body=self._keyring.seal(put_body),
                purpose="cabinet_password",
                status=CABINET_PENDING,
            )
        )
        await self._session.flush()

    async def email(self, to: str, body: str, purpose: str) -> bool:
        """Queue an e-mail notice for the billing centre's mailer."""
        await self._queue(OutboundChannel.email, to, purpose, body=body)
        OUTBOUND.labels(channel="email", purpose=purpose, result="queued").inc()
        return True


async def list_outbox(
    session: AsyncSession, *, to_number: str | None = None, after_id: int = 0
) -> list[OutboxMessage]:
    """Outbox rows, oldest first."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.id > after_id, OutboxMessage.status != "withheld")
        .order_by(OutboxMessage.id)
    )
    if to_number:
        query = query.where(OutboxMessage.to_number == to_number)
    return list((await session.scalars(query)).all())


# How far a message has got, by status. Callbacks arrive out of order (a late "sent" after
# "delivered", "ringing" after "completed"), so a row only ever moves forward. Our own states
# (queued, claimed, sending, unknown...) are 0: any word from the provider is news. A delivery
# wins over a contradicting failure report: it is the proof that the message arrived.
PROGRESS: Mapping[str, int] = {
    "sent": 1,
    "initiated": 1,
    "ringing": 2,
    "in-progress": 3,
    "undelivered": 4,
    "failed": 4,
    "busy": 4,
    "no-answer": 4,
    "canceled": 4,
    "delivered": 5,
    "completed": 5,
    "read": 6,
}


def further(current: str, reported: str) -> str:
    """The status a row should have after `reported`: the one that got further."""
    return reported if PROGRESS.get(reported, 0) > PROGRESS.get(current, 0) else current


async def record_status(
    session: AsyncSession,
    provider_sid: str,
    status: str,
    error_code: str | None,
    *,
    outbox_key: str | None = None,
) -> OutboxMessage | None:
    """Apply a provider status callback to the message it is about; None if it is not ours.

    The row is found by the provider's sid, or else by our own key from the StatusCallback URL
    (`?outbox=`): a create request that timed out may still have been accepted, and then this
    callback is how we learn its sid and fate. The row keeps the furthest state it reached.
    """
    row = await session.scalar(
        select(OutboxMessage).where(OutboxMessage.provider_sid == provider_sid)
    )
    if row is None and outbox_key:
        row = await session.scalar(
            select(OutboxMessage).where(OutboxMessage.idempotency_key == outbox_key[:32])
        )
        if row is not None and row.provider_sid is None:
            row.provider_sid = provider_sid[:64] or None
    if row is None:
        return None
    status = (status or "")[:16]
    # Any other word ("queued", "accepted", "sending"...) only says the provider has it; never
    # one of the dispatcher's own states, or it would send the message again.
    reported = status if status in PROGRESS else "sent"
    if further(row.status, reported) != row.status:
        row.status = reported
        row.error_code = error_code[:16] if error_code else None
    if row.status in DELIVERED_STATUSES and row.purpose in SECRET_PURPOSES:
        row.body = ""
    await session.flush()
    return row


async def purge_expired_secrets(session: AsyncSession, settings: Settings) -> int:
    """Blank the text of code and password messages whose secret can no longer be used."""
    now = utcnow()
    horizons = {
        "code": now - timedelta(seconds=settings.code_ttl_seconds),
        "password": now - timedelta(hours=settings.temp_password_ttl_hours),
        "cabinet_password": now - timedelta(hours=settings.temp_password_ttl_hours),
    }
    purged = 0
    for purpose, horizon in horizons.items():
        result = await session.execute(
            update(OutboxMessage)
            .where(
                OutboxMessage.purpose == purpose,
                OutboxMessage.created_at < horizon,
                OutboxMessage.body != "",
            )
            .values(body="")
        )
        purged += int(getattr(result, "rowcount", 0) or 0)
    # Withheld rows only existed to make every path cost the same.
    withheld = await session.execute(
        delete(OutboxMessage).where(
            OutboxMessage.status == "withheld", OutboxMessage.created_at < horizons["code"]
        )
    )
    return purged + int(getattr(withheld, "rowcount", 0) or 0)


def readable_body(row: OutboxMessage, keyring: Keyring) -> str:
    """The text of an outbox row for the people allowed to read it (CLI, simulator)."""
    if not row.body:
        return ""
    return keyring.unseal(row.body) or "<unreadable: sealed with another key>"
