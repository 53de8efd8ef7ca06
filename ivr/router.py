"""Voice webhooks: parse Twilio's form, let the flow decide, render TwiML."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from redis.exceptions import RedisError

from core.delivery import record_status
from core.deps import DbSession, SendAfterResponse, ServicesDep, TwilioRequest
from core.services import Services
from core.twilio_security import TwilioForm
from core.webhooks import fallback_route
from ivr.flow import CallerInput, VoiceFlow
from ivr.menu import State
from ivr.screens import Screens
from ivr.session import CallSession, CallStore
from ivr.twiml import Ending, Renderer, Screen, Speech
from voice_prompts import DEFAULT_LANGUAGE, Language

log = structlog.get_logger(__name__)

XML = "application/xml"


def _guard(request: Request, form: TwilioForm | None) -> Response:
    """Any failure behind a voice webhook: a spoken apology and a transfer, never a 500."""
    return _apology(request.app.state.services, form.get("CallSid") if form else "")


router = APIRouter(
    prefix="/ivr", route_class=fallback_route(_guard), dependencies=[SendAfterResponse]
)


def twiml(body: str) -> Response:
    """A TwiML response."""
    return Response(content=body, media_type=XML)


def _screens(services: Services) -> Screens:
    return Screens(settings=services.settings, keyring=services.keyring, prompts=services.prompts)


def _show(services: Services, screen: Screen) -> Response:
    return twiml(Renderer(services.settings).render(screen))


def _render(services: Services, call: CallSession) -> Response:
    return _show(services, _screens(services).screen(call))


def _apology(services: Services, call_sid: str) -> Response:
    return _show(services, _screens(services).apology(call_sid))


def _store(services: Services) -> CallStore:
    return CallStore(services.redis, services.settings.call_state_ttl_seconds)


def _flow(services: ServicesDep, db: DbSession) -> VoiceFlow:
    return VoiceFlow(
        settings=services.settings,
        recovery=services.recovery(db),
        keyring=services.keyring,
        prompts=services.prompts,
    )


Flow = Annotated[VoiceFlow, Depends(_flow)]


def _call_sid(form: TwilioRequest) -> str:
    call_sid = form.get("CallSid")
    if not call_sid.startswith("CA") or len(call_sid) > 64:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "CallSid missing")
    return call_sid


async def _load_or_none(services: Services, call_sid: str) -> CallSession | None:
    """The call's session for the operator's leg; without Redis the summary still comes."""
    if not call_sid:
        return None
    try:
        return await _store(services).load(call_sid)
    except RedisError:
        log.warning("ivr.session_unavailable")
        return None


@router.post("/voice")
async def incoming_call(form: TwilioRequest, services: ServicesDep, flow: Flow) -> Response:
    """A new call: greeting and main menu in one prompt."""
    call_sid = _call_sid(form)
    store = _store(services)
    call = CallSession(call_sid=call_sid, caller=form.get("From")[:32])
    if not await store.create(call):
        # A retried first webhook: answer the same, start nothing twice.
        call = await store.load(call_sid) or call
    log.info("ivr.call", call=call_sid, state=call.state)
    return _render(services, call)


@router.post("/step")
async def menu_step(
    form: TwilioRequest,
    services: ServicesDep,
    flow: Flow,
    step: Annotated[int, Query(alias="s", ge=0)],
) -> Response:
    """One caller input (keys or speech) for the step the Gather was rendered at."""
    call_sid = _call_sid(form)
    store = _store(services)
    claimed, call = await store.claim_step(call_sid, step)
    if call is None:
        return _apology(services, call_sid)
    if not claimed or step != call.step:
        # A replayed or retried webhook: the same answer, no second side effect.
        log.info("ivr.replay", call=call_sid, step=step)
        return _render(services, call)
    await flow.handle(
        call, CallerInput(digits=form.get("Digits")[:64], speech=form.get("SpeechResult")[:300])
    )
    call.step += 1
    await store.save(call)
    log.info("ivr.step", call=call_sid, step=call.step, state=call.state)
    return _render(services, call)


@router.post("/verify")
async def verification_call(
    form: TwilioRequest,
    services: ServicesDep,
    flow: Flow,
    attempt_id: Annotated[str, Query(alias="a", max_length=64)],
) -> Response:
    """The outbound call to the phone on file: nothing secret before a key is pressed."""
    call_sid = _call_sid(form)
    store = _store(services)
    existing = await store.load(call_sid)
    if existing is not None:
        return _render(services, existing)
    call = await flow.open_verification_call(call_sid, attempt_id)
    if call.state is State.verify_greeting:
        await store.create(call)
    return _render(services, call)


@router.post("/whisper")
async def whisper(
    form: TwilioRequest,
    services: ServicesDep,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
    reason: Annotated[str, Query(alias="r", max_length=32)] = "",
) -> Response:
    """What the operator hears before being connected to the caller."""
    call = await _load_or_none(services, call_sid)
    summary = _screens(services).whisper(call, reason or None)
    return _show(services, Screen(lines=[Speech(summary, Language.ru)]))


@router.post("/dial-result")
async def dial_result(
    form: TwilioRequest,
    services: ServicesDep,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
) -> Response:
    """After the transfer: hang up if the operator answered, apologise if nobody did."""
    call = await _load_or_none(services, call_sid)
    language = call.language if call else DEFAULT_LANGUAGE
    if form.get("DialCallStatus") == "completed":
        return _show(services, Screen(ending=Ending.hangup))
    prompts = services.prompts
    screen = Screen(
        lines=[
            Speech(prompts.text("voice.operator_unavailable", language), language),
            Speech(prompts.text("voice.goodbye", language), language),
        ],
        ending=Ending.hangup,
    )
    return _show(services, screen)


@router.post("/status", status_code=status.HTTP_204_NO_CONTENT)
async def call_status(form: TwilioRequest, services: ServicesDep, db: DbSession) -> Response:
    """Call status callback: a finished call's state (and any sealed secret) is dropped."""
    call_sid = _call_sid(form)
    # Our own outbound calls (code calls) keep their status in the outbox.
    await record_status(db, call_sid, form.get("CallStatus"), None)
    if form.get("CallStatus") in {"completed", "busy", "failed", "no-answer", "canceled"}:
        await _store(services).end(call_sid)
    log.info("ivr.status", call=call_sid, status=form.get("CallStatus")[:16])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
