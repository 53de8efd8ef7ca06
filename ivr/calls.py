"""A resident's call: the first webhook, each menu step, the verification call, the status."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Query, Request, Response, status

from core.delivery.outbox import record_status
from core.models import CALLER_ID_CHARS
from ivr.flow import CallerInput, Unclaimed
from ivr.menu import State
from ivr.session import CallSession
from ivr.verification_call import after_call_status
from ivr.webhook import (
    VoiceWebhook,
    Webhook,
    call_sid_of,
    step_of,
    voice_router,
    voice_webhook,
)

log = structlog.get_logger(__name__)

FINAL_CALL_STATUSES = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})

router = voice_router()


# The two webhooks of every call take the request, not FastAPI dependencies: solving those is
# about a tenth of a menu step's CPU (docs/performance.md); the others keep the declarations.


@router.post("/voice")
async def incoming_call(request: Request) -> Response:
    """A new call: greeting and main menu in one prompt."""
    hook = await voice_webhook(request)
    call_sid = call_sid_of(hook.form)
    store = hook.parts.calls
    call = CallSession(call_sid=call_sid, caller=hook.form.get("From")[:CALLER_ID_CHARS])
    if not await store.create(call):
        # A retried first webhook: answer the same, start nothing twice.
        call = await store.load(call_sid) or call
    log.info("ivr.call", call=call_sid, state=call.state)
    return hook.render(call)


@router.post("/step")
async def menu_step(request: Request) -> Response:
    """One caller input (keys or speech) for the step the Gather was rendered at (`s`)."""
    hook = await voice_webhook(request)
    step = step_of(request)
    form = hook.form
    call_sid = call_sid_of(form)
    store = hook.parts.calls
    given = CallerInput(digits=form.get("Digits")[:64], speech=form.get("SpeechResult")[:300])
    decided = await _decided_ahead(hook, call_sid, step, given)
    if isinstance(decided, CallSession):
        log.info("ivr.step", call=call_sid, step=decided.step, state=decided.state)
        return hook.render(decided)
    claimed, call = decided
    if call is None:
        return hook.apology(call_sid)
    if not claimed or step != call.step:
        # A replayed or retried webhook: the same answer, no second side effect.
        log.info("ivr.replay", call=call_sid, step=step)
        return hook.render(call)
    await hook.flow.handle(call, given)
    call.step += 1
    await store.save(call)
    log.info("ivr.step", call=call_sid, step=call.step, state=call.state)
    return hook.render(call)


async def _decided_ahead(
    hook: VoiceWebhook, call_sid: str, step: int, given: CallerInput
) -> CallSession | tuple[bool, CallSession | None]:
    """The step decided from the session this process remembers and stored, claimed, in one
    round trip: the call one step on. Otherwise the step claimed as `CallStore.claim_step`
    does: when the step acts (`Unclaimed`), the copy is gone, or the call moved since (that
    answer comes in the same round trip as the try)."""
    store = hook.parts.calls
    recalled = store.recall(call_sid, step)
    if recalled is None:
        return await store.claim_step(call_sid, step)
    call = recalled.session
    try:
        await hook.dry_flow.handle(call, given)
    except Unclaimed:
        return await store.claim_step(call_sid, step)
    call.step += 1
    moved = await store.advance(step, recalled, call)
    return call if moved is None else moved


@router.post("/verify")
async def verification_call(
    hook: Webhook, attempt_id: Annotated[str, Query(alias="a", max_length=64)]
) -> Response:
    """The outbound call to the phone on file: nothing secret before a key is pressed."""
    call_sid = call_sid_of(hook.form)
    store = hook.parts.calls
    existing = await store.load(call_sid)
    if existing is not None:
        return hook.render(existing)
    call = await hook.flow.open_verification_call(call_sid, attempt_id)
    # The resident is the called party here: an operator would call them back on it.
    call.caller = hook.form.get("To")[:CALLER_ID_CHARS]
    if call.state is State.verify_greeting:
        await store.create(call)
    return hook.render(call)


@router.post("/status", status_code=status.HTTP_204_NO_CONTENT)
async def call_status(
    hook: Webhook, outbox: Annotated[str | None, Query(max_length=64)] = None
) -> Response:
    """Call status callback: a finished call's state (and any sealed secret) is dropped.

    A transfer still waiting when the call ends was abandoned by the caller.
    """
    form, services, db = hook.form, hook.services, hook.db.session
    call_sid = call_sid_of(form)
    # Our own outbound calls (code calls) keep their status in the outbox, found by their sid
    # or by our key from the StatusCallback URL (`outbox`).
    row = await record_status(db, call_sid, form.get("CallStatus"), None, outbox_key=outbox)
    if form.get("CallStatus") in FINAL_CALL_STATUSES:
        # The code call: placed once its caller hung up, placed again if nobody answered.
        completed = row is None and form.get("CallStatus") == "completed"
        calls = hook.parts.calls
        ended = await calls.load(call_sid) if completed else None
        await after_call_status(services, db, ended, form.get("CallStatus"), row)
        await calls.end(call_sid)
        await services.cases(db).abandoned(call_sid)
    log.info("ivr.status", call=call_sid, status=form.get("CallStatus")[:16])
    return Response(status_code=status.HTTP_204_NO_CONTENT)
