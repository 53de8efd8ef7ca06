"""A route class for Twilio webhooks: a failure behind one becomes a polite answer, not a 500."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute

from core.twilio_security import TwilioForm

log = structlog.get_logger(__name__)

Fallback = Callable[[Request, TwilioForm | None], Response]


def fallback_route(fallback: Fallback) -> type[APIRoute]:
    """An APIRoute whose failures (but not 4xx refusals) are answered by `fallback`."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except HTTPException:
                    raise
                except Exception as exc:
                    log.error("webhook.failed", path=request.url.path, error=type(exc).__name__)
                    form = getattr(request.state, "twilio_form", None)
                    return fallback(request, form if isinstance(form, TwilioForm) else None)

            return guarded

    return GuardedRoute
