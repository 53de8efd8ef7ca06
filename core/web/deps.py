"""FastAPI dependencies: every route reads the same way (`DbSession`, `TwilioRequest`, …)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import structlog
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from core.audit.log import has_pending_events
from core.platform.container import Services
from core.web.signature import TwilioForm

log = structlog.get_logger(__name__)


# Dependencies are `async def` even when they do not await: FastAPI runs a plain `def` on a
# worker thread, and a thread hop per dependency is most of a menu step's cost under load.


async def get_services(request: Request) -> Services:
    """The process-wide services built in the app's lifespan."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def request_time(services: ServicesDep) -> datetime:
    """Now, for the working hours: the container's clock."""
    return services.clock()


Now = Annotated[datetime, Depends(request_time)]


async def get_db(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request: commit on success, roll back on error.

    The transaction begins at the first use: most menu steps never touch the database, and
    they skip beginning and committing one. An error skips the commit, and closing the session
    rolls back.
    """
    async with services.sessionmaker() as session:
        yield session
        if session.in_transaction() or has_pending_events(session):
            await session.commit()


async def dispatch_after_response(services: ServicesDep) -> AsyncIterator[None]:
    """Send what the request queued, once its response is out (request-scoped exit)."""
    queued = services.dispatcher.track_request()
    yield
    if queued[0]:
        try:
            if services.settings.dispatch_delay_ms:
                await asyncio.sleep(services.settings.dispatch_delay_ms / 1000)
            await services.dispatcher.drain()
        except Exception as exc:
            # The periodic sweep in the app's lifespan picks up whatever is left queued.
            log.warning("outbound.dispatch_failed", error=type(exc).__name__)


async def verified_twilio_form(request: Request, services: ServicesDep) -> TwilioForm:
    """The webhook form, after its X-Twilio-Signature was verified."""
    return await services.verifier(request)


# Function scope: the commit happens before the response leaves, so Twilio's next webhook (or a
# status callback) always sees this one's writes, and a failed commit is not answered as success.
DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]
TwilioRequest = Annotated[TwilioForm, Depends(verified_twilio_form)]
SendAfterResponse = Depends(dispatch_after_response)
