"""The code by a voice call: when it is placed, and placed again (§3).

It is an ordinary outbox row (purpose `code_call`), so the dispatcher places it, once: its claim
is one atomic `UPDATE … WHERE status = 'queued'` (the dispatcher). Asked for in a call, the row
is queued with `next_attempt_at` a little ahead (`verification_call_wait_seconds`): the caller is
still listening to "положите трубку", and the phone on file may be the one in their hand. Two
things make it due, and whichever comes first places the call, the other finding it claimed:

- the inbound call's `completed` status callback (`release_after_hangup`), the moment the caller
  has hung up;
- the row's own `next_attempt_at` (the fallback timer, for a number whose status callback is not
  configured): the sweeper of any gateway process wakes for it (`Dispatcher.wake`).

Busy, no answer and failed are reported by the code call's own status callback; the row is then
queued again (`retry_unanswered`), at most `verification_call_retries` times, each
`verification_call_retry_seconds` later, and never once the code could no longer be entered in
time (`send_before`).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

import structlog
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from core.kit.phones import mask_phone
from core.models import OutboxMessage, OutboxPurpose, OutboxStatus
from core.platform.clock import utcnow
from core.platform.metrics import OUTBOUND_RETRIES
from core.platform.settings import Settings

log = structlog.get_logger(__name__)

# What the code call's status callback reports when nobody took it.
UNANSWERED = frozenset({"busy", "no-answer", "failed"})


async def release_after_hangup(
    session: AsyncSession, attempt_id: str, now: datetime | None = None
) -> bool:
    """The caller who asked for the code call hung up: a call still held is due now.

    Only a call never placed yet: a retry's wait is not cut short by a late callback.
    """
    now = now or utcnow()
    released = await session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.attempt_ref == attempt_id,
            OutboxMessage.purpose == OutboxPurpose.code_call,
            OutboxMessage.status == OutboxStatus.queued,
            OutboxMessage.attempts == 0,
            OutboxMessage.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
    )
    return bool(getattr(released, "rowcount", 0))


def retry_unanswered(row: OutboxMessage, settings: Settings, now: datetime | None = None) -> bool:
    """A code call that was busy, not answered or failed is queued again, if it may be."""
    if row.purpose != OutboxPurpose.code_call or row.status not in UNANSWERED:
        return False
    if row.attempts > settings.verification_call_retries:
        log.info("code_call.gave_up", to=mask_phone(row.to_number), attempts=row.attempts)
        return False
    due = (now or utcnow()) + timedelta(seconds=settings.verification_call_retry_seconds)
    if row.send_before is not None and due >= row.send_before:
        return False
    OUTBOUND_RETRIES.labels(channel=row.channel, purpose=row.purpose, error=row.status).inc()
    log.info("code_call.retry_scheduled", to=mask_phone(row.to_number), status=row.status)
    # A fresh key (it rides in the next call's StatusCallback URL) and no sid: a late or
    # repeated callback about the call that was not answered cannot touch the next one.
    row.status, row.reason, row.next_attempt_at = OutboxStatus.queued, "retrying", due
    row.provider_sid, row.idempotency_key = None, secrets.token_hex(16)
    row.error_code = None
    return True


__all__ = ["release_after_hangup", "retry_unanswered"]
