"""A route class for Twilio webhooks: a failure behind one becomes a polite answer, not a 500."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.background import BackgroundTask, BackgroundTasks
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from core.platform.container import Services
from core.platform.metrics import WEBHOOK_SECONDS
from core.web.deps import TRANSACTIONS_KEY, RequestTransaction, dispatch_once_out
from core.web.signature import TwilioForm

log = structlog.get_logger(__name__)

Fallback = Callable[[Request, TwilioForm | None], Response]


def fallback_route(fallback: Fallback) -> type[APIRoute]:
    """An APIRoute whose failures (but not 4xx refusals) are answered by `fallback`.

    The guard wraps the route's `handle`, outside FastAPI's dependency exit stacks, so an
    exception first passes through the request's transaction (which rolls back) and only then
    becomes the fallback answer. HTTP refusals are not failures: Starlette's own (a method other
    than POST → 405 with `Allow`, §6.16) is raised from this very `handle` and passes through
    untouched, to be answered as the 4xx it is, with no TwiML and no error logged.
    """

    class GuardedRoute(APIRoute):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._observe = WEBHOOK_SECONDS.labels(route=self.path).observe

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            """The endpoint, then the commit of what its request wrote (`request_transaction`)
            before the response leaves: Twilio's next webhook always sees it, and a failed
            commit is a failure, not an answer. A failure rolls back. What the request queued
            to send is sent once the response is out (a request that queued nothing, such as a
            menu step, gets no background task at all)."""
            handler = super().get_route_handler()

            async def committed(request: Request) -> Response:
                services: Services = request.app.state.services
                queued = services.dispatcher.track_request()
                opened: list[RequestTransaction] = []
                request.scope[TRANSACTIONS_KEY] = opened
                try:
                    response = await handler(request)
                    for transaction in opened:
                        await transaction.commit()
                finally:
                    for transaction in opened:
                        await transaction.close()
                if queued[0]:
                    send = BackgroundTask(dispatch_once_out(services, queued))
                    earlier = response.background
                    response.background = (
                        send if earlier is None else BackgroundTasks([earlier, send])
                    )
                return response

            return committed

        async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
            started = time.perf_counter()
            try:
                await super().handle(scope, receive, send)
            except HTTPException as refusal:
                log.info("webhook.refused", method=scope.get("method"), status=refusal.status_code)
                raise
            except Exception as exc:
                request = Request(scope)
                log.error("webhook.failed", path=request.url.path, error=type(exc).__name__)
                form = getattr(request.state, "twilio_form", None)
                response = fallback(request, form if isinstance(form, TwilioForm) else None)
                await response(scope, receive, send)
            finally:
                self._observe(time.perf_counter() - started)

    return GuardedRoute
