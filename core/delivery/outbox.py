"""Outbound SMS, calls and e-mail behind one protocol: Twilio REST, or the outbox for demo and dev.

Every outbound message is recorded in the request's own transaction (the outbox table): in outbox
mode the row is the message; with Twilio it is the record status callbacks update.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.delivery.messenger import Messenger
from core.delivery.optouts import OptOuts
from core.delivery.twilio import TwilioMessenger
from core.kit.phones import mask_phone, outbound_allowed
from core.models import OutboundChannel, OutboxMessage, OutboxPurpose, OutboxStatus
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.metrics import OUTBOUND
from core.platform.settings import MessengerKind, Settings

log = structlog.get_logger(__name__)


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


def build_messenger(settings: Settings) -> Messenger:
    """The messenger the settings ask for."""
    if settings.messenger is MessengerKind.twilio:
        return TwilioMessenger(settings)
    return OutboxMessenger()


# The only SMS that may reach a number that has opted out (§4): the confirmation of its STOP,
# and the notice that a recovery of the account completed (§6.8) — a spoofed STOP must not
# silence the one message that tells a resident someone else got into the cabinet.
OPT_OUT_CONFIRMATION = OutboxPurpose.optout_confirmation
RECOVERY_NOTICE = OutboxPurpose.notice
DESPITE_OPT_OUT = frozenset({OPT_OUT_CONFIRMATION, RECOVERY_NOTICE})

# A well-formed number that is never on file: withheld messages do the same checks on it.
WITHHELD_PLACEHOLDER = "+79000000000"

FAILED_STATUSES = frozenset({OutboxStatus.undelivered, OutboxStatus.failed})
DELIVERED_STATUSES = frozenset({OutboxStatus.delivered, OutboxStatus.read})
# Texts that carry a secret: purged once delivered, or once the secret has expired anyway.
SECRET_PURPOSES = frozenset({OutboxPurpose.code, OutboxPurpose.password})
# The status of a held cabinet PUT: outside the dispatcher's "queued", so only the settler sees it.
CABINET_PENDING = OutboxStatus.pending

# Messages that hand a resident a code (the SMS, or the call that speaks one): never late.
CODE_PURPOSES = frozenset({OutboxPurpose.code, OutboxPurpose.code_call})


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
        if purpose == OutboxPurpose.password:
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
        status: OutboxStatus = OutboxStatus.queued,
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
                # An unknown purpose is a bug: refused here, before anything is stored.
                purpose=OutboxPurpose(purpose),
                status=status,
                attempt_ref=attempt_ref,
                next_attempt_at=not_before,
            )
        )
        await self._session.flush()
        if status is OutboxStatus.queued and not_before is not None:
            if self._wake is not None:
                self._wake()
        elif status is OutboxStatus.queued:
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
        await self._queue(OutboundChannel.sms, "", purpose, body=body, status=OutboxStatus.withheld)
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
        core/recovery/code_calls.py), and the dispatcher's atomic claim places it once either way.
        """
        if not self.allowed(to):
            log.warning("outbound.refused_destination", to=mask_phone(to), purpose=purpose)
            OUTBOUND.labels(channel="call", purpose=purpose, result="refused").inc()
            await self._queue(
                OutboundChannel.call, "", purpose, url=url, status=OutboxStatus.withheld
            )
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
        await self._queue(channel, "", purpose, body=body, url=url, status=OutboxStatus.withheld)
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
                purpose=OutboxPurpose.cabinet_password,
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
        .where(OutboxMessage.id > after_id, OutboxMessage.status != OutboxStatus.withheld)
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
    OutboxStatus.sent: 1,
    OutboxStatus.initiated: 1,
    OutboxStatus.ringing: 2,
    OutboxStatus.in_progress: 3,
    OutboxStatus.undelivered: 4,
    OutboxStatus.failed: 4,
    OutboxStatus.busy: 4,
    OutboxStatus.no_answer: 4,
    OutboxStatus.canceled: 4,
    OutboxStatus.delivered: 5,
    OutboxStatus.completed: 5,
    OutboxStatus.read: 6,
}


def further(current: OutboxStatus, reported: OutboxStatus) -> OutboxStatus:
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
    reported = OutboxStatus(status) if status in PROGRESS else OutboxStatus.sent
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
        OutboxPurpose.code: now - timedelta(seconds=settings.code_ttl_seconds),
        OutboxPurpose.password: now - timedelta(hours=settings.temp_password_ttl_hours),
        OutboxPurpose.cabinet_password: now - timedelta(hours=settings.temp_password_ttl_hours),
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
            OutboxMessage.status == OutboxStatus.withheld,
            OutboxMessage.created_at < horizons[OutboxPurpose.code],
        )
    )
    return purged + int(getattr(withheld, "rowcount", 0) or 0)


def readable_body(row: OutboxMessage, keyring: Keyring) -> str:
    """The text of an outbox row for the people allowed to read it (CLI, simulator)."""
    if not row.body:
        return ""
    return keyring.unseal(row.body) or "<unreadable: sealed with another key>"
