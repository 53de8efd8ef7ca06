"""What the voice routers share: the guarded router, the per-request parts, TwiML out.

Routers parse Twilio's form, hand it to the flow or the case service, and render; nothing here
decides what a call does next.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Annotated
from weakref import WeakKeyDictionary

import structlog
from fastapi import APIRouter, Depends, HTTPException, Request, Response, status
from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.escalations.service import CaseChange, in_own_transaction
from core.kit.schedule import Schedule
from core.platform.container import Services
from core.platform.settings import Settings
from core.web.deps import (
    RequestTransaction,
    TwilioRequest,
    request_transaction,
)
from core.web.routes import fallback_route
from core.web.signature import TwilioForm
from ivr.flow import VoiceFlow
from ivr.screens import Screens
from ivr.session import CallSession, CallStore
from ivr.twiml import Renderer, Screen

log = structlog.get_logger(__name__)

XML = "application/xml"
# A call's steps are counted from 0; no call takes a billion.
MAX_STEP_DIGITS = 9


def guard(request: Request, form: TwilioForm | None) -> Response:
    """Any failure behind a voice webhook: a spoken apology and a transfer, never a 500.

    Needs neither the database nor Redis: only the configuration and the container's clock.
    """
    services: Services = request.app.state.services
    return apology(services, form.get("CallSid") if form else "", services.clock())


def voice_router() -> APIRouter:
    """A router for Twilio's voice webhooks: guarded, and sending what a request queued."""
    return APIRouter(prefix="/ivr", route_class=fallback_route(guard))


def twiml(body: str) -> Response:
    """A TwiML response."""
    return Response(content=body, media_type=XML)


@dataclass(frozen=True, eq=False)
class VoiceParts:
    """The voice channel's stateless parts, built once from the services they were made of."""

    settings: Settings
    redis: Redis
    screens: Screens
    renderer: Renderer
    calls: CallStore
    schedule: Schedule

    @classmethod
    def build(cls, services: Services) -> VoiceParts:
        settings = services.settings
        return cls(
            settings=settings,
            redis=services.redis,
            screens=Screens(settings=settings, keyring=services.keyring, prompts=services.prompts),
            renderer=Renderer(settings),
            calls=CallStore(services.redis, settings.call_state_ttl_seconds),
            schedule=Schedule.from_settings(settings),
        )


_parts: WeakKeyDictionary[Services, VoiceParts] = WeakKeyDictionary()


def voice_parts(services: Services) -> VoiceParts:
    """The voice parts of these services: made at the first webhook, made again only when the
    settings or Redis client they were made of are replaced (tests do)."""
    parts = _parts.get(services)
    if (
        parts is None
        or parts.settings is not services.settings
        or parts.redis is not services.redis
    ):
        parts = _parts[services] = VoiceParts.build(services)
    return parts


def screens(services: Services) -> Screens:
    """What the caller hears, from the call's state."""
    return voice_parts(services).screens


def show(services: Services, screen: Screen) -> Response:
    """One screen as TwiML."""
    return twiml(voice_parts(services).renderer.render(screen))


def render(services: Services, call: CallSession) -> Response:
    """The call's current screen as TwiML."""
    return show(services, screens(services).screen(call))


def apology(services: Services, call_sid: str, now: datetime) -> Response:
    """The stateless apology: the operator when the desk is open, else the hours."""
    desk_open = voice_parts(services).schedule.is_open(now)
    return show(services, screens(services).apology(call_sid, desk_open=desk_open))


def call_store(services: Services) -> CallStore:
    """The calls' state in Redis."""
    return voice_parts(services).calls


@dataclass(eq=False)
class VoiceWebhook:
    """One voice webhook: its verified form, the services, now, and its transaction (opened
    when first used: most menu steps never touch the database)."""

    form: TwilioForm
    services: Services
    parts: VoiceParts
    now: datetime
    db: RequestTransaction

    @cached_property
    def flow(self) -> VoiceFlow:
        """The voice flow for this webhook; the recovery service and cases when first used."""
        return self._flow(dry=False)

    @cached_property
    def dry_flow(self) -> VoiceFlow:
        """The flow that only moves a call through the menu (`VoiceFlow`, `dry`)."""
        return self._flow(dry=True)

    def _flow(self, *, dry: bool) -> VoiceFlow:
        services, db = self.services, self.db
        return VoiceFlow(
            settings=services.settings,
            recovery=lambda: services.recovery(db.session),
            keyring=services.keyring,
            prompts=services.prompts,
            cases=lambda: services.cases(db.session),
            schedule=self.parts.schedule,
            clock=lambda: self.now,
            dry=dry,
        )

    def render(self, call: CallSession) -> Response:
        """The call's current screen as TwiML."""
        return twiml(self.parts.renderer.render(self.parts.screens.screen(call)))

    def apology(self, call_sid: str) -> Response:
        """The stateless apology (`apology`)."""
        return apology(self.services, call_sid, self.now)


async def voice_webhook(request: Request) -> VoiceWebhook:
    """The one dependency of the call webhooks, the signature checked first.

    One plain dependency rather than a tree of them, or a generator: FastAPI solves a tree
    anew for every request, and wraps a generator's exit in cancel scopes; for a menu step the
    two were a third of its CPU (docs/performance.md). The route commits the transaction
    (`request_transaction`).
    """
    services: Services = request.app.state.services
    form = await services.verifier(request)
    db = request_transaction(request, services)
    return VoiceWebhook(form, services, voice_parts(services), services.clock(), db)


Webhook = Annotated[VoiceWebhook, Depends(voice_webhook)]


def step_of(request: Request) -> int:
    """The step a Gather was rendered at (the query's `s`); anything but a number is refused
    (422, as FastAPI refuses a declared parameter)."""
    raw = request.query_params.get("s", "")
    if not (raw.isascii() and raw.isdigit() and len(raw) <= MAX_STEP_DIGITS):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "s: a step number")
    return int(raw)


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
