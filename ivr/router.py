"""Voice webhooks: parse Twilio's form, let the flow decide, render TwiML."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from redis.exceptions import RedisError

from core.audit import AuditLog
from core.delivery import record_status
from core.deps import DbSession, Now, SendAfterResponse, ServicesDep, TwilioRequest, request_time
from core.escalations import Escalations, Outcome
from core.hours import Schedule, utc_now
from core.metrics import TRANSFER_OUTCOMES
from core.models import CALLER_ID_CHARS, Escalation, EscalationKind, EscalationStatus
from core.operators import MAX_DESK_NUMBER_DIGITS, MAX_DESK_PIN, DeskSignIn, DeskVerdict
from core.services import Services
from core.twilio_security import TwilioForm
from core.webhooks import fallback_route
from ivr.flow import CallerInput, VoiceFlow
from ivr.menu import State
from ivr.screens import Screens
from ivr.session import CallSession, CallStore
from ivr.twiml import Ending, Renderer, Screen, Speech
from ivr.verification_call import after_call_status
from voice_prompts import DEFAULT_LANGUAGE, Language

log = structlog.get_logger(__name__)

XML = "application/xml"


# Dial results that mean the operator took the call, and queue results likewise.
ANSWERED_DIAL = frozenset({"completed", "answered"})
BRIDGED_QUEUE = frozenset({"bridged", "bridging-in-process"})
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})


def _guard(request: Request, form: TwilioForm | None) -> Response:
    """Any failure behind a voice webhook: a spoken apology and a transfer, never a 500.

    Needs neither the database nor Redis: only the configuration and the clock.
    """
    services: Services = request.app.state.services
    clock = request.app.dependency_overrides.get(request_time, utc_now)
    return _apology(services, form.get("CallSid") if form else "", clock())


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


def _apology(services: Services, call_sid: str, now: datetime) -> Response:
    desk_open = Schedule.from_settings(services.settings).is_open(now)
    return _show(services, _screens(services).apology(call_sid, desk_open=desk_open))


def _store(services: Services) -> CallStore:
    return CallStore(services.redis, services.settings.call_state_ttl_seconds)


async def _flow(services: ServicesDep, db: DbSession, now: Now) -> VoiceFlow:
    return VoiceFlow(
        settings=services.settings,
        recovery=services.recovery(db),
        keyring=services.keyring,
        prompts=services.prompts,
        escalations=Escalations(db, services.keyring),
        clock=lambda: now,
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
    call = CallSession(call_sid=call_sid, caller=form.get("From")[:CALLER_ID_CHARS])
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
    now: Now,
) -> Response:
    """One caller input (keys or speech) for the step the Gather was rendered at."""
    call_sid = _call_sid(form)
    store = _store(services)
    claimed, call = await store.claim_step(call_sid, step)
    if call is None:
        return _apology(services, call_sid, now)
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
    # The resident is the called party here: an operator would call them back on it.
    call.caller = form.get("To")[:CALLER_ID_CHARS]
    if call.state is State.verify_greeting:
        await store.create(call)
    return _render(services, call)


CaseChange = Callable[[Escalations, Escalation], Awaitable[None]]


async def _update_case(services: Services, call_sid: str, change: CaseChange) -> bool:
    """Apply `change` to the call's open case in a transaction of its own.

    Used by the webhooks around a transfer: a database failure is logged, and the caller (or
    the operator) still gets their TwiML.
    """
    if not call_sid:
        return False
    try:
        async with services.sessionmaker() as session, session.begin():
            cases = Escalations(session, services.keyring)
            case = await cases.find_open(call_sid)
            if case is None:
                return False
            await change(cases, case)
            return True
    except Exception as exc:
        log.warning("ivr.case_update_failed", error=type(exc).__name__)
        return False


def _count_outcome(cases: Escalations, case: Escalation, outcome: str) -> None:
    route = str(cases.context(case).get("route") or "dial")
    TRANSFER_OUTCOMES.labels(
        route=route if route in ("dial", "enqueue") else "dial", outcome=outcome
    ).inc()


async def _answered(cases: Escalations, case: Escalation) -> None:
    if case.outcome != Outcome.answered:
        _count_outcome(cases, case, "answered")
    await cases.answered(case)


async def _unanswered(cases: Escalations, case: Escalation) -> None:
    if case.outcome is None:
        _count_outcome(cases, case, "no_answer")
    await cases.unanswered(case)


async def _abandoned(cases: Escalations, case: Escalation) -> None:
    if case.kind is EscalationKind.transfer and case.status is EscalationStatus.waiting:
        _count_outcome(cases, case, "hung_up")
    await cases.abandoned(case)


@router.post("/whisper")
async def whisper(
    form: TwilioRequest,
    services: ServicesDep,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
    reason: Annotated[str, Query(alias="r", max_length=32)] = "",
) -> Response:
    """What the operator hears before being connected to the caller (the operator answered)."""
    call = await _load_or_none(services, call_sid)
    await _update_case(services, call_sid, _answered)
    summary = _screens(services).whisper(call, reason or None)
    return _show(services, Screen(lines=[Speech(summary, Language.ru)]))


async def _offer_callback(services: Services, call_sid: str) -> Response:
    """Nobody took the transfer: offer a callback request (needs the call's state)."""
    try:
        call = await _store(services).load(call_sid) if call_sid else None
        if call is not None and call.state is State.operator:
            call.state, call.tries, call.notices = State.callback_offer, 0, []
            call.step += 1
            await _store(services).save(call)
    except RedisError:
        log.warning("ivr.session_unavailable")
        call = None
    if call is not None and call.state in (State.callback_offer, State.callback_done):
        # The offer, or (a retried result webhook) whatever the caller answered to it.
        return _render(services, call)
    language = call.language if call else DEFAULT_LANGUAGE
    prompts = services.prompts
    screen = Screen(
        lines=[
            Speech(prompts.text("voice.operator_unavailable", language), language),
            Speech(prompts.text("voice.goodbye", language), language),
        ],
        ending=Ending.hangup,
    )
    return _show(services, screen)


@router.post("/dial-result")
async def dial_result(
    form: TwilioRequest,
    services: ServicesDep,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
) -> Response:
    """After the transfer: hang up if the operator answered, offer a callback if nobody did."""
    if form.get("DialCallStatus") in ANSWERED_DIAL:
        await _update_case(services, call_sid, _answered)
        return _show(services, Screen(ending=Ending.hangup))
    await _update_case(services, call_sid, _unanswered)
    log.info("ivr.transfer_unanswered", call=call_sid, status=form.get("DialCallStatus")[:16])
    return await _offer_callback(services, call_sid)


def _language(value: str) -> Language:
    return Language(value) if value in Language.__members__ else DEFAULT_LANGUAGE


def _count(value: str) -> int:
    """A non-negative count Twilio posted, or 0 when it is missing or malformed."""
    return int(value) if value.isdigit() and len(value) <= 6 else 0


@router.post("/queue-wait")
async def queue_wait(
    form: TwilioRequest,
    services: ServicesDep,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
    language: Annotated[str, Query(alias="l", max_length=8)] = "",
) -> Response:
    """The hold prompt of the queue (Twilio's waitUrl), and `*` from it: leave for a callback.

    Stateless: Twilio posts QueuePosition and AvgQueueTime with every request.
    """
    if form.get("Digits") == "*":
        log.info("ivr.queue_leave", call=call_sid)
        return _show(services, Screen(leave=True))
    screen = _screens(services).queue_wait(
        call_sid,
        _language(language),
        _count(form.get("QueuePosition")) or None,
        _count(form.get("AvgQueueTime")),
    )
    return _show(services, screen)


@router.post("/queue-result")
async def queue_result(
    form: TwilioRequest,
    services: ServicesDep,
    db: DbSession,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
    language: Annotated[str, Query(alias="l", max_length=8)] = "",
) -> Response:
    """The caller left the queue (Enqueue's action): answered, hung up, or asked for a callback."""
    result = form.get("QueueResult")
    log.info("ivr.queue_result", call=call_sid, result=result[:24])
    if result in BRIDGED_QUEUE:
        await _update_case(services, call_sid, _answered)
        return _show(services, Screen(ending=Ending.hangup))
    if result == "hangup":
        await _update_case(services, call_sid, _abandoned)
        return _show(services, Screen(ending=Ending.hangup))
    if result == "leave":
        caller = form.get("From")[:CALLER_ID_CHARS]
        return await _callback_from_queue(services, db, call_sid, caller, _language(language))
    # queue-full, error, system-error, redirected: nobody will answer from this queue.
    await _update_case(services, call_sid, _unanswered)
    return await _offer_callback(services, call_sid)


async def _callback_from_queue(
    services: Services, db: DbSession, call_sid: str, caller: str, language: Language
) -> Response:
    """`*` while waiting: the transfer becomes a callback request, once (retries answer alike).

    A caller queued by the stateless apology has neither a case nor a session: the request is
    stored with the number Twilio gives.
    """
    cases = Escalations(db, services.keyring)
    case = await cases.find_open(call_sid)
    if case is not None and case.kind is EscalationKind.transfer:
        _count_outcome(cases, case, "callback")
        await cases.to_callback(case, left_queue=True)
    elif case is None:
        call = await _load_or_none(services, call_sid)
        await cases.open(
            kind=EscalationKind.callback,
            channel="voice",
            session_ref=call_sid,
            phone=call.caller if call and call.caller else caller,
            reason=(call.reason if call else None) or "error",
            account_number=call.account if call else None,
            purpose=call.purpose if call else None,
            verification=call.verification.value if call else "none",
            attempts=call.failures if call else 0,
            left_queue=True,
        )
    log.info("ivr.callback_requested", call=call_sid, left_queue=True)
    return _show(services, _screens(services).callback_taken(language))


@router.post("/queue-connect")
async def queue_connect(
    form: TwilioRequest,
    services: ServicesDep,
) -> Response:
    """The <Queue> noun's url: runs on the dequeued caller's end as an operator takes the call."""
    call_sid = _call_sid(form)
    call = await _load_or_none(services, call_sid)
    await _update_case(services, call_sid, _answered)
    return _show(
        services, _screens(services).queue_connecting(call.language if call else DEFAULT_LANGUAGE)
    )


def _desk_sign_in(services: Services, db: DbSession) -> DeskSignIn:
    return DeskSignIn(
        session=db,
        redis=services.redis,
        settings=services.settings,
        keyring=services.keyring,
        audit=AuditLog(db, services.keyring),
    )


@router.post("/operator-desk")
async def operator_desk(form: TwilioRequest, services: ServicesDep, db: DbSession) -> Response:
    """The operators' phones dial in here (enqueue route): the next case, then that caller.

    Nothing about a case is said and nobody is bridged before the call signed in (§6.11).
    """
    call_sid = _call_sid(form)
    caller = form.get("From")[:64]
    desk = _desk_sign_in(services, db)
    if await desk.signed_in(call_sid) is None and not await desk.trust_sip(call_sid, caller):
        if not await desk.may_try(caller):
            return _show(services, _screens(services).desk_refused(limited=True))
        return _show(services, _screens(services).desk_sign_in())
    waiting, head = 0, None
    try:
        async with services.sessionmaker() as session:
            waiting, head = await Escalations(session, services.keyring).queued_transfers()
    except Exception as exc:
        log.warning("ivr.desk_unavailable", error=type(exc).__name__)
    return _show(services, _screens(services).operator_desk(waiting, head))


@router.post("/operator-desk/number")
async def operator_desk_number(form: TwilioRequest, services: ServicesDep) -> Response:
    """The operator's number was keyed: the PIN next, whoever the number belongs to."""
    _call_sid(form)
    number = form.get("Digits")[:MAX_DESK_NUMBER_DIGITS]
    if not number.isdigit():
        return _show(services, _screens(services).desk_refused())
    return _show(services, _screens(services).desk_pin(number))


@router.post("/operator-desk/pin")
async def operator_desk_pin(
    form: TwilioRequest,
    services: ServicesDep,
    db: DbSession,
    number: Annotated[str, Query(alias="o", max_length=MAX_DESK_NUMBER_DIGITS)] = "",
) -> Response:
    """One PIN check per call: in, or a polite goodbye (the PIN is never logged)."""
    call_sid = _call_sid(form)
    desk = _desk_sign_in(services, db)
    if await desk.signed_in(call_sid) is not None:
        # A retried webhook of a check that passed.
        return _show(services, _screens(services).desk_signed_in())
    verdict = await desk.check(
        call_sid, form.get("From")[:64], number, form.get("Digits")[: MAX_DESK_PIN + 1]
    )
    if verdict is DeskVerdict.accepted:
        return _show(services, _screens(services).desk_signed_in())
    return _show(services, _screens(services).desk_refused(limited=verdict is DeskVerdict.limited))


@router.post("/status", status_code=status.HTTP_204_NO_CONTENT)
async def call_status(
    form: TwilioRequest,
    services: ServicesDep,
    db: DbSession,
    outbox: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Call status callback: a finished call's state (and any sealed secret) is dropped.

    A transfer still waiting when the call ends was abandoned by the caller.
    """
    call_sid = _call_sid(form)
    # Our own outbound calls (code calls) keep their status in the outbox, found by their sid
    # or by our key from the StatusCallback URL (`outbox`).
    row = await record_status(db, call_sid, form.get("CallStatus"), None, outbox_key=outbox)
    if form.get("CallStatus") in FINAL_CALL_STATUSES:
        # The code call: placed once its caller hung up, placed again if nobody answered.
        completed = row is None and form.get("CallStatus") == "completed"
        ended = await _store(services).load(call_sid) if completed else None
        await after_call_status(services, db, ended, form.get("CallStatus"), row)
        await _store(services).end(call_sid)
        cases = Escalations(db, services.keyring)
        case = await cases.find_open(call_sid)
        if case is not None:
            await _abandoned(cases, case)
    log.info("ivr.status", call=call_sid, status=form.get("CallStatus")[:16])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
