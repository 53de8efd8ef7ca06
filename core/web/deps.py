"""FastAPI dependencies: every route reads the same way (`DbSession`, `TwilioRequest`, …)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Annotated

import structlog
from fastapi import BackgroundTasks, Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

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


class RequestTransaction:
    """The request's transaction, opened at its first use (`session`): a menu step that never
    touches the database builds no session at all."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._session: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        """The request's session, made on first use."""
        if self._session is None:
            self._session = self._sessionmaker()
        return self._session

    async def commit(self) -> None:
        """Commit what the request did, if it did anything."""
        session = self._session
        if session is not None and (session.in_transaction() or has_pending_events(session)):
            await session.commit()

    async def close(self) -> None:
        """Close the session (rolling back whatever was not committed)."""
        if self._session is not None:
            await self._session.close()


# Where a guarded route (core/web/routes.py) keeps the transactions its request opened.
TRANSACTIONS_KEY = "eirc.transactions"


def request_transaction(request: Request, services: Services) -> RequestTransaction:
    """A transaction for this request, committed by the route before the response leaves
    (and closed, rolling back, if the endpoint fails): cheaper than a generator dependency,
    whose exit FastAPI wraps in cancel scopes on every request.

    Only a guarded route (`fallback_route`) finishes it; anywhere else this refuses.
    """
    opened: list[RequestTransaction] | None = request.scope.get(TRANSACTIONS_KEY)
    if opened is None:
        raise RuntimeError("request_transaction() needs a route made by fallback_route()")
    transaction = RequestTransaction(services.sessionmaker)
    opened.append(transaction)
    return transaction


async def get_db(services: ServicesDep) -> AsyncIterator[AsyncSession]:
    """One transaction per request (the routes outside the call webhooks): commit on success,
    roll back on error. It begins at the first statement: a request that never touches the
    database begins and commits none. An error skips the commit, and closing rolls back."""
    db = RequestTransaction(services.sessionmaker)
    try:
        yield db.session
        await db.commit()
    finally:
        await db.close()


def dispatch_once_out(services: Services, queued: list[bool]) -> Callable[[], Awaitable[None]]:
    """The task that sends what a request queued (`queued`: `Dispatcher.track_request`'s flag),
    to run once the response is out."""

    async def dispatch() -> None:
        if not queued[0]:
            return
        try:
            if services.settings.dispatch_delay_ms:
                await asyncio.sleep(services.settings.dispatch_delay_ms / 1000)
            await services.dispatcher.drain()
        except Exception as exc:
            # The periodic sweep in the app's lifespan picks up whatever is left queued.
            log.warning("outbound.dispatch_failed", error=type(exc).__name__)

    return dispatch


async def dispatch_after_response(request: Request, background: BackgroundTasks) -> None:
    """Send what the request queued, once its response is out (a background task of the
    response: not a generator dependency, whose exit FastAPI wraps at a cost per request).
    The webhook routes do this in their route class (`core/web/routes.py`), at no cost to a
    request that queued nothing."""
    services: Services = request.app.state.services
    background.add_task(dispatch_once_out(services, services.dispatcher.track_request()))


async def verified_twilio_form(request: Request, services: ServicesDep) -> TwilioForm:
    """The webhook form, after its X-Twilio-Signature was verified."""
    return await services.verifier(request)


# Function scope: the commit happens before the response leaves, so Twilio's next webhook (or a
# status callback) always sees this one's writes, and a failed commit is not answered as success.
DbSession = Annotated[AsyncSession, Depends(get_db, scope="function")]
TwilioRequest = Annotated[TwilioForm, Depends(verified_twilio_form)]
SendAfterResponse = Depends(dispatch_after_response)
