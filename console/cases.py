"""The console's queue and a case: take, send a credential, resolve, abandon (the desk decides)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.datastructures import FormData

from console.deps import CaseId, CheckedForm, Desk, SignedIn, form_field, render
from console.sessions import ConsoleSession
from core.escalations.desk import (
    DeskRefused,
    OperatorDesk,
    Refusal,
)
from core.models import EscalationKind, EscalationStatus
from core.recovery.service import Purpose
from core.web.deps import SendAfterResponse

router = APIRouter(prefix="/console", include_in_schema=False)


@router.get("/", response_class=HTMLResponse)
async def queue_page(request: Request, session: SignedIn, desk: Desk) -> HTMLResponse:
    """Waiting and in-progress cases, oldest first; the rows refresh themselves."""
    return render(
        request,
        "queue.html",
        {
            "me": session,
            "cases": await desk.queue(),
            "closed": await desk.recently_closed(),
        },
    )


@router.get("/queue/rows", response_class=HTMLResponse)
async def queue_rows(request: Request, session: SignedIn, desk: Desk) -> HTMLResponse:
    """The queue's rows alone, polled by console.js."""
    return render(request, "_queue_rows.html", {"me": session, "cases": await desk.queue()})


# -- a case -----------------------------------------------------------------------------------

DONE_MESSAGES = frozenset({"taken", "password_sent", "login_sent", "resolved", "abandoned"})


async def _case_page(
    request: Request,
    session: ConsoleSession,
    desk: OperatorDesk,
    escalation_id: int,
    *,
    done: str | None = None,
    refusal: Refusal | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    try:
        escalation = await desk.case(escalation_id)
    except DeskRefused:
        return render(request, "error.html", {"me": session, "reason": "not_found"}, 404)
    mine = (
        escalation.status is EscalationStatus.in_progress
        and escalation.operator == session.username
    )
    return render(
        request,
        "case.html",
        {
            "me": session,
            "case": escalation,
            "history": await desk.history(escalation),
            "open": escalation.status in (EscalationStatus.waiting, EscalationStatus.in_progress),
            "mine": mine,
            # The number to call back, in full, only for the operator working a callback.
            "show_full_phone": mine and escalation.kind is EscalationKind.callback,
            "done": done if done in DONE_MESSAGES else None,
            "refusal": refusal,
        },
        status_code,
    )


@router.get("/cases/{escalation_id}", response_class=HTMLResponse)
async def case_page(
    request: Request, escalation_id: CaseId, session: SignedIn, desk: Desk, done: str | None = None
) -> HTMLResponse:
    """One case: its context, the actions, and its audit history."""
    return await _case_page(request, session, desk, escalation_id, done=done)


def _done(escalation_id: int, what: str) -> RedirectResponse:
    return RedirectResponse(f"/console/cases/{escalation_id}?done={what}", status_code=303)


_REFUSAL_STATUS = {
    Refusal.not_found: 404,
    Refusal.closed: 409,
    Refusal.taken_by_other: 409,
    Refusal.second_send_needs_supervisor: 403,
    Refusal.sends_exhausted: 409,
    Refusal.limited: 429,
}


async def _refused(
    request: Request,
    session: ConsoleSession,
    desk: OperatorDesk,
    escalation_id: int,
    refused: DeskRefused,
) -> HTMLResponse:
    return await _case_page(
        request,
        session,
        desk,
        escalation_id,
        refusal=refused.reason,
        status_code=_REFUSAL_STATUS.get(refused.reason, 400),
    )


@router.post("/cases/{escalation_id}/take")
async def take(
    request: Request, escalation_id: CaseId, form: CheckedForm, session: SignedIn, desk: Desk
) -> Response:
    """Take the case: in progress, under this operator's name."""
    try:
        await desk.take(escalation_id, session.username)
    except DeskRefused as refused:
        return await _refused(request, session, desk, escalation_id, refused)
    return _done(escalation_id, "taken")


@router.post("/cases/{escalation_id}/temporary-password", dependencies=[SendAfterResponse])
async def send_temporary_password(
    request: Request, escalation_id: CaseId, form: CheckedForm, session: SignedIn, desk: Desk
) -> Response:
    """Issue a temporary password and text it to the mobile on file; nobody here sees it."""
    return await _send(request, escalation_id, form, session, desk, Purpose.password)


@router.post("/cases/{escalation_id}/login", dependencies=[SendAfterResponse])
async def resend_login(
    request: Request, escalation_id: CaseId, form: CheckedForm, session: SignedIn, desk: Desk
) -> Response:
    """Text the cabinet login to the mobile on file."""
    return await _send(request, escalation_id, form, session, desk, Purpose.login)


async def _send(
    request: Request,
    escalation_id: int,
    form: FormData,
    session: ConsoleSession,
    desk: OperatorDesk,
    purpose: Purpose,
) -> Response:
    try:
        await desk.send_credential(
            escalation_id,
            session.username,
            purpose=purpose,
            account_number=form_field(form, "account_number"),
            identity_confirmed=form_field(form, "identity_confirmed") == "yes",
            supervisor=session.is_supervisor,
        )
    except DeskRefused as refused:
        return await _refused(request, session, desk, escalation_id, refused)
    return _done(escalation_id, "password_sent" if purpose is Purpose.password else "login_sent")


@router.post("/cases/{escalation_id}/resolve")
async def resolve(
    request: Request, escalation_id: CaseId, form: CheckedForm, session: SignedIn, desk: Desk
) -> Response:
    """Close the case as resolved, with the operator's note."""
    return await _close(request, escalation_id, form, session, desk, EscalationStatus.resolved)


@router.post("/cases/{escalation_id}/abandon")
async def abandon(
    request: Request, escalation_id: CaseId, form: CheckedForm, session: SignedIn, desk: Desk
) -> Response:
    """Close the case as abandoned (the resident could not be reached)."""
    return await _close(request, escalation_id, form, session, desk, EscalationStatus.abandoned)


async def _close(
    request: Request,
    escalation_id: int,
    form: FormData,
    session: ConsoleSession,
    desk: OperatorDesk,
    status: EscalationStatus,
) -> Response:
    note = form.get("note")
    try:
        await desk.close(
            escalation_id,
            session.username,
            status=status,
            note=note if isinstance(note, str) else "",
        )
    except DeskRefused as refused:
        return await _refused(request, session, desk, escalation_id, refused)
    return _done(escalation_id, str(status))


# -- supervisor -------------------------------------------------------------------------------
