"""What the voice routers share: the guarded router, the per-request parts, TwiML out.

Routers parse Twilio's form, hand it to the flow or the case service, and render; nothing here
decides what a call does next.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from redis.exceptions import RedisError

from core.escalations.service import CaseChange, in_own_transaction
from core.kit.schedule import Schedule
from core.platform.container import Services
from core.web.deps import DbSession, Now, SendAfterResponse, ServicesDep, TwilioRequest
from core.web.routes import fallback_route
from core.web.signature import TwilioForm
from ivr.flow import VoiceFlow
from ivr.screens import Screens
from ivr.session import CallSession, CallStore
from ivr.twiml import Renderer, Screen

log = structlog.get_logger(__name__)

XML = "application/xml"


def guard(request: Request, form: TwilioForm | None) -> Response:
    """Any failure behind a voice webhook: a spoken apology and a transfer, never a 500.

    Needs neither the database nor Redis: only the configuration and the container's clock.
    """
    services: Services = request.app.state.services
    return apology(services, form.get("CallSid") if form else "", services.clock())


def voice_router() -> APIRouter:
    """A router for Twilio's voice webhooks: guarded, and sending what a request queued."""
    return APIRouter(
        prefix="/ivr", route_class=fallback_route(guard), dependencies=[SendAfterResponse]
    )


def twiml(body: str) -> Response:
    """A TwiML response."""
    return Response(content=body, media_type=XML)


def screens(services: Services) -> Screens:
    """What the caller hears, from the call's state."""
    return Screens(settings=services.settings, keyring=services.keyring, prompts=services.prompts)


def show(services: Services, screen: Screen) -> Response:
    """One screen as TwiML."""
    return twiml(Renderer(services.settings).render(screen))


def render(services: Services, call: CallSession) -> Response:
    """The call's current screen as TwiML."""
    return show(services, screens(services).screen(call))


def apology(services: Services, call_sid: str, now: datetime) -> Response:
    """The stateless apology: the operator when the desk is open, else the hours."""
    desk_open = Schedule.from_settings(services.settings).is_open(now)
    return show(services, screens(services).apology(call_sid, desk_open=desk_open))


def call_store(services: Services) -> CallStore:
    """The calls' state in Redis."""
    return CallStore(services.redis, services.settings.call_state_ttl_seconds)


async def _flow(services: ServicesDep, db: DbSession, now: Now) -> VoiceFlow:
    return VoiceFlow(
        settings=services.settings,
        recovery=services.recovery(db),
        keyring=services.keyring,
        prompts=services.prompts,
        cases=services.cases(db),
        clock=lambda: now,
    )


Flow = Annotated[VoiceFlow, Depends(_flow)]


def call_sid_of(form: TwilioRequest) -> str:
    """The form's CallSid; a webhook without one is refused (400)."""
    call_sid = form.get("CallSid")
    if not call_sid.startswith("CA") or len(call_sid) > 64:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "CallSid missing")
    return call_sid


async def load_or_none(services: Services, call_sid: str) -> CallSession | None:
    """The call's session for the operator's leg; without Redis the summary still comes."""
    if not call_sid:
        return None
    try:
        return await call_store(services).load(call_sid)
    except RedisError:
        log.warning("ivr.session_unavailable")
        return None


async def update_case(services: Services, call_sid: str, change: CaseChange) -> None:
    """Apply `change` to the call's case in a transaction of its own (failures only logged)."""
    if call_sid:
        await in_own_transaction(services.sessionmaker, services.keyring, change)
