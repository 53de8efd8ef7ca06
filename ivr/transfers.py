"""A call handed to the operators: the whisper, the dial and queue results, the operators' desk."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Query, Response
from redis.exceptions import RedisError

from core.audit.log import AuditLog
from core.escalations.service import Resident
from core.models import CALLER_ID_CHARS, EscalationReason, Verification
from core.operators.repository import MAX_DESK_NUMBER_DIGITS, MAX_DESK_PIN, DeskSignIn, DeskVerdict
from core.platform.container import Services
from core.web.deps import DbSession, ServicesDep, TwilioRequest
from ivr.flow import offer_callback
from ivr.menu import State
from ivr.twiml import Ending, Screen, Speech
from ivr.webhook import (
    call_sid_of,
    call_store,
    load_or_none,
    render,
    screens,
    show,
    update_case,
    voice_router,
)
from voice_prompts import DEFAULT_LANGUAGE, Language

log = structlog.get_logger(__name__)

# Dial results that mean the operator took the call, and queue results likewise.
ANSWERED_DIAL = frozenset({"completed", "answered"})
BRIDGED_QUEUE = frozenset({"bridged", "bridging-in-process"})

router = voice_router()


@router.post("/whisper")
async def whisper(
    form: TwilioRequest,
    services: ServicesDep,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
    reason: Annotated[str, Query(alias="r", max_length=32)] = "",
) -> Response:
    """What the operator hears before being connected to the caller (the operator answered)."""
    call = await load_or_none(services, call_sid)
    await update_case(services, call_sid, lambda cases: cases.answered(call_sid))
    summary = screens(services).whisper(call, reason or None)
    return show(services, Screen(lines=[Speech(summary, Language.ru)]))


async def _offer_callback(services: Services, call_sid: str) -> Response:
    """Nobody took the transfer: offer a callback request (needs the call's state)."""
    try:
        call = await call_store(services).load(call_sid) if call_sid else None
        if call is not None and offer_callback(call):
            await call_store(services).save(call)
    except RedisError:
        log.warning("ivr.session_unavailable")
        call = None
    if call is not None and call.state in (State.callback_offer, State.callback_done):
        # The offer, or (a retried result webhook) whatever the caller answered to it.
        return render(services, call)
    language = call.language if call else DEFAULT_LANGUAGE
    prompts = services.prompts
    screen = Screen(
        lines=[
            Speech(prompts.text("voice.operator_unavailable", language), language),
            Speech(prompts.text("voice.goodbye", language), language),
        ],
        ending=Ending.hangup,
    )
    return show(services, screen)


@router.post("/dial-result")
async def dial_result(
    form: TwilioRequest,
    services: ServicesDep,
    call_sid: Annotated[str, Query(alias="c", max_length=64)] = "",
) -> Response:
    """After the transfer: hang up if the operator answered, offer a callback if nobody did."""
    if form.get("DialCallStatus") in ANSWERED_DIAL:
        await update_case(services, call_sid, lambda cases: cases.answered(call_sid))
        return show(services, Screen(ending=Ending.hangup))
    await update_case(services, call_sid, lambda cases: cases.unanswered(call_sid))
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
        return show(services, Screen(leave=True))
    screen = screens(services).queue_wait(
        call_sid,
        _language(language),
        _count(form.get("QueuePosition")) or None,
        _count(form.get("AvgQueueTime")),
    )
    return show(services, screen)


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
        await update_case(services, call_sid, lambda cases: cases.answered(call_sid))
        return show(services, Screen(ending=Ending.hangup))
    if result == "hangup":
        await update_case(services, call_sid, lambda cases: cases.abandoned(call_sid))
        return show(services, Screen(ending=Ending.hangup))
    if result == "leave":
        caller = form.get("From")[:CALLER_ID_CHARS]
        return await _callback_from_queue(services, db, call_sid, caller, _language(language))
    # queue-full, error, system-error, redirected: nobody will answer from this queue.
    await update_case(services, call_sid, lambda cases: cases.unanswered(call_sid))
    return await _offer_callback(services, call_sid)


async def _callback_from_queue(
    services: Services, db: DbSession, call_sid: str, caller: str, language: Language
) -> Response:
    """`*` while waiting: the transfer becomes a callback request, once (retries answer alike).

    A caller queued by the stateless apology has neither a case nor a session: the request is
    stored with the number Twilio gives.
    """

    async def resident() -> tuple[Resident, EscalationReason]:
        call = await load_or_none(services, call_sid)
        who = Resident(
            channel="voice",
            session_ref=call_sid,
            phone=call.caller if call and call.caller else caller,
            account_number=call.account if call else None,
            purpose=call.purpose if call else None,
            verification=call.verification if call else Verification.none,
            attempts=call.failures if call else 0,
        )
        return who, (call.reason if call else None) or EscalationReason.error

    await services.cases(db).left_queue(call_sid, resident)
    log.info("ivr.callback_requested", call=call_sid, left_queue=True)
    return show(services, screens(services).callback_taken(language))


@router.post("/queue-connect")
async def queue_connect(
    form: TwilioRequest,
    services: ServicesDep,
) -> Response:
    """The <Queue> noun's url: runs on the dequeued caller's end as an operator takes the call."""
    call_sid = call_sid_of(form)
    call = await load_or_none(services, call_sid)
    await update_case(services, call_sid, lambda cases: cases.answered(call_sid))
    return show(
        services, screens(services).queue_connecting(call.language if call else DEFAULT_LANGUAGE)
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
    call_sid = call_sid_of(form)
    caller = form.get("From")[:64]
    desk = _desk_sign_in(services, db)
    if await desk.signed_in(call_sid) is None and not await desk.trust_sip(call_sid, caller):
        if not await desk.may_try(caller):
            return show(services, screens(services).desk_refused(limited=True))
        return show(services, screens(services).desk_sign_in())
    waiting, head = 0, None
    try:
        async with services.sessionmaker() as session:
            waiting, head = await services.cases(session).queued_transfers()
    except Exception as exc:
        log.warning("ivr.desk_unavailable", error=type(exc).__name__)
    return show(services, screens(services).operator_desk(waiting, head))


@router.post("/operator-desk/number")
async def operator_desk_number(form: TwilioRequest, services: ServicesDep) -> Response:
    """The operator's number was keyed: the PIN next, whoever the number belongs to."""
    call_sid_of(form)
    number = form.get("Digits")[:MAX_DESK_NUMBER_DIGITS]
    if not number.isdigit():
        return show(services, screens(services).desk_refused())
    return show(services, screens(services).desk_pin(number))


@router.post("/operator-desk/pin")
async def operator_desk_pin(
    form: TwilioRequest,
    services: ServicesDep,
    db: DbSession,
    number: Annotated[str, Query(alias="o", max_length=MAX_DESK_NUMBER_DIGITS)] = "",
) -> Response:
    """One PIN check per call: in, or a polite goodbye (the PIN is never logged)."""
    call_sid = call_sid_of(form)
    desk = _desk_sign_in(services, db)
    if await desk.signed_in(call_sid) is not None:
        # A retried webhook of a check that passed.
        return show(services, screens(services).desk_signed_in())
    verdict = await desk.check(
        call_sid, form.get("From")[:64], number, form.get("Digits")[: MAX_DESK_PIN + 1]
    )
    if verdict is DeskVerdict.accepted:
        return show(services, screens(services).desk_signed_in())
    return show(services, screens(services).desk_refused(limited=verdict is DeskVerdict.limited))
