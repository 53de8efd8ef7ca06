"""What a call status callback means for the code by a voice call (§3; core/recovery/code_calls.py).

Two kinds of call report to `/ivr/status`: an inbound call to the hotline, whose `completed`
releases the code call its caller asked for (placed once the caller has hung up), and the code
call itself, which is placed again when it was busy, not answered or failed.
"""

from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import OutboxMessage
from core.platform.container import Services
from core.recovery.code_calls import release_after_hangup, retry_unanswered
from ivr.menu import State
from ivr.session import CallSession

log = structlog.get_logger(__name__)


async def after_call_status(
    services: Services,
    db: AsyncSession,
    call: CallSession | None,
    status: str,
    row: OutboxMessage | None,
) -> None:
    """Act on one status callback: `call` is the inbound call's session (if it had one), `row`
    the outbox row of our own outbound call it reports on (if it is one)."""
    if row is not None:
        if retry_unanswered(row, services.settings):
            await db.flush()
            # Due in a couple of minutes: the sweeper recomputes when to wake.
            services.dispatcher.wake()
        return
    if status != "completed" or call is None or call.outbound:
        return
    if (
        call.state is State.call_arranged
        and call.attempt_id
        and await release_after_hangup(db, call.attempt_id)
    ):
        # Sent once this response is out (the webhook route class, core/web/routes.py).
        services.dispatcher.notify()
        log.info("code_call.released", call=call.call_sid)


__all__ = ["after_call_status"]
