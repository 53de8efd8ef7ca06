"""SMS webhooks: parse the message, let the dialog decide, answer with MessagingResponse TwiML."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response, status
from twilio.twiml.messaging_response import MessagingResponse

from core.delivery.optouts import OptOuts
from core.delivery.outbox import FAILED_STATUSES, record_status
from core.kit.phones import InvalidPhoneNumber, mask_phone, outbound_allowed, parse_phone
from core.kit.schedule import Schedule
from core.models import OutboxPurpose
from core.recovery.limits import RateLimiter
from core.web.deps import DbSession, Now, ServicesDep, TwilioRequest
from core.web.routes import fallback_route
from core.web.signature import TwilioForm
from sms.dialog import Reply, SmsDialog
from sms.grammar import parse_sms
from sms.replies import ReplyGate
from sms.thread import SmsThreads
from voice_prompts import DEFAULT_LANGUAGE

log = structlog.get_logger(__name__)

XML = "application/xml"


def _messaging(text: str) -> Response:
    response = MessagingResponse()
    if text:
        response.message(text)
    return Response(content=str(response), media_type=XML)


def _guard(request: Request, form: TwilioForm | None) -> Response:
    """Any failure behind an SMS webhook: a short apology with the hotline number.

    Not to a sender we may not text (§6.14): a failure must not be a way around that rule.
    """
    services = request.app.state.services
    try:
        sender = parse_phone(form.get("From") if form else "", services.settings.default_region)
    except InvalidPhoneNumber:
        return _messaging("")
    if not outbound_allowed(sender.e164, services.settings.allowed_countries):
        return _messaging("")
    text = services.prompts.text(
        "sms.reply_error", DEFAULT_LANGUAGE, hotline=services.settings.hotline_number
    )
    return _messaging(text)


router = APIRouter(prefix="/sms", route_class=fallback_route(_guard))


async def _threads(services: ServicesDep) -> SmsThreads:
    return SmsThreads(services.redis, services.settings.code_ttl_seconds + 600)


async def _dialog(services: ServicesDep, db: DbSession, now: Now) -> SmsDialog:
    return SmsDialog(
        settings=services.settings,
        recovery=services.recovery(db),
        opt_outs=OptOuts(db),
        cases=services.cases(db),
        threads=await _threads(services),
        replies=ReplyGate(
            services.settings, RateLimiter(services.redis, services.settings, services.keyring)
        ),
        clock=lambda: now,
    )


Threads = Annotated[SmsThreads, Depends(_threads)]
Dialog = Annotated[SmsDialog, Depends(_dialog)]


def _message_sid(form: TwilioForm) -> str:
    sid = form.get("MessageSid") or form.get("SmsSid")
    if sid[:2] not in ("SM", "MM") or len(sid) > 64:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "MessageSid missing")
    return sid


@router.post("/inbound")
async def inbound_sms(
    form: TwilioRequest, services: ServicesDep, dialog: Dialog, threads: Threads
) -> Response:
    """An SMS to the short number."""
    sid = _message_sid(form)
    try:
        sender = parse_phone(form.get("From"), services.settings.default_region).e164
    except InvalidPhoneNumber:
        # An alphanumeric or malformed sender cannot get a reply or a code.
        return _messaging("")
    earlier = await threads.claim(sid)
    if earlier is not None:
        log.info("sms.replay", message=sid)
        return _messaging(earlier)
    try:
        reply = await dialog.handle(sender, sid, parse_sms(form.get("Body")))
    except Exception:
        await threads.release(sid)
        raise
    text = _render(services, reply)
    await threads.remember(sid, text)
    log.info("sms.inbound", sender=mask_phone(sender), reply=reply.key if reply else None)
    return _messaging(text)


def _render(services: ServicesDep, reply: Reply | None) -> str:
    if reply is None or reply.sent_as_code:
        return ""
    params = dict(reply.params)
    if reply.wait_seconds:
        params["wait"] = services.prompts.wait(reply.wait_seconds, reply.language)
    text = services.prompts.text(reply.key, reply.language, **params)
    if reply.with_hours:
        # The hours are configuration; their words come from the catalogue (compact for SMS).
        hours = Schedule.from_settings(services.settings).describe(
            services.prompts, reply.language, short=True
        )
        text = f"{text} {hours}"
    return text


@router.post("/status", status_code=status.HTTP_204_NO_CONTENT)
async def sms_status(
    form: TwilioRequest,
    services: ServicesDep,
    db: DbSession,
    outbox: Annotated[str | None, Query(max_length=64)] = None,
) -> Response:
    """Delivery status of a message we sent; a bounced code is recorded (and audited).

    `outbox` is our key for the message, from its StatusCallback URL: it finds the row even
    when the create request timed out and we never learnt Twilio's sid.
    """
    sid = _message_sid(form)
    state = form.get("MessageStatus") or form.get("SmsStatus")
    row = await record_status(db, sid, state, form.get("ErrorCode") or None, outbox_key=outbox)
    # The row's status, not the callback's: a late failure report after "delivered" is stale.
    if row is not None and row.status in FAILED_STATUSES and row.purpose is OutboxPurpose.code:
        if row.attempt_ref:
            await services.recovery(db).mark_undelivered(row.attempt_ref, row.error_code)
        log.warning("sms.code_undelivered", error=form.get("ErrorCode")[:8])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
