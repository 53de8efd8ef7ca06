"""Sends queued outbox messages after the webhook has answered.

Requests only queue messages (one INSERT, the same cost whether or not anyone gets a message);
the dispatcher claims each queued row atomically, hands it to the messenger and records the
result, so a slow or failing provider never delays a caller's next prompt.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.crypto import Keyring
from core.db import transaction
from core.delivery import DeliveryFailed, Messenger
from core.metrics import OUTBOUND
from core.models import OutboundChannel, OutboxMessage
from core.phones import mask_phone

log = structlog.get_logger(__name__)

BATCH = 50
# Set per request by `dispatch_after_response`: did this request queue anything? A process-wide
# flag would race (another request's drain could clear it before this one commits).
_queued_here: ContextVar[list[bool] | None] = ContextVar("queued_here", default=None)
OnFailure = Callable[[AsyncSession, OutboxMessage], Awaitable[None]]


class Dispatcher:
    """Sends what requests queued; any number of processes may run one (claims are atomic)."""

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        messenger: Messenger,
        keyring: Keyring,
        on_failure: OnFailure,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._messenger = messenger
        self._keyring = keyring
        self._on_failure = on_failure

    def __repr__(self) -> str:
        return "Dispatcher(...)"

    @staticmethod
    def track_request() -> list[bool]:
        """Start tracking whether the current request queues a message."""
        flag = [False]
        _queued_here.set(flag)
        return flag

    def notify(self) -> None:
        """The current request queued something: it is sent once the response is out."""
        flag = _queued_here.get()
        if flag is not None:
            flag[0] = True

    async def drain(self) -> int:
        """Send every queued SMS and call; returns how many this call handled."""
        handled = 0
        while True:
            async with self._sessionmaker() as session:
                ids = list(
                    (
                        await session.scalars(
                            select(OutboxMessage.id)
                            .where(
                                OutboxMessage.status == "queued",
                                OutboxMessage.channel != OutboundChannel.email,
                            )
                            .order_by(OutboxMessage.id)
                            .limit(BATCH)
                        )
                    ).all()
                )
            if not ids:
                return handled
            for message_id in ids:
                handled += await self._send(message_id)

    async def _send(self, message_id: int) -> int:
        async with transaction(self._sessionmaker) as session:
            claimed = await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message_id, OutboxMessage.status == "queued")
                .values(status="sending")
            )
            if not getattr(claimed, "rowcount", 0):
                return 0  # another process (or drain) has it
        async with transaction(self._sessionmaker) as session:
            row = await session.get(OutboxMessage, message_id)
            assert row is not None
            body = self._keyring.unseal(row.body) or "" if row.body else ""
            try:
                if row.channel is OutboundChannel.call:
                    sid = await self._messenger.place_call(
                        to=row.to_number, url=row.url or "", purpose=row.purpose
                    )
                else:
                    sid = await self._messenger.send_sms(
                        to=row.to_number, body=body, purpose=row.purpose
                    )
            except DeliveryFailed:
                row.status, row.error_code = "failed", "send"
                OUTBOUND.labels(channel=row.channel, purpose=row.purpose, result="failed").inc()
                log.warning("outbound.failed", to=mask_phone(row.to_number), purpose=row.purpose)
                await self._on_failure(session, row)
                return 1
            row.status, row.provider_sid = "sent", sid
            if not self._messenger.keeps_messages:
                # Handed over: the provider has the text now; ours would only be a liability.
                row.body = ""
            OUTBOUND.labels(channel=row.channel, purpose=row.purpose, result="sent").inc()
            log.info("outbound.sent", to=mask_phone(row.to_number), purpose=row.purpose)
        return 1
