"""The operator console: sign-in, the queue, a case, its actions, the supervisor view.

Routers parse and render; the desk (core/operator_desk.py) decides. Every page needs a signed-in
operator, every POST a valid CSRF token; the text operators read lives in the templates.
"""

from __future__ import annotations

import hmac
import json
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from core.audit import AuditLog
from core.clock import utcnow
from core.delivery import Delivery
from core.deps import DbSession, SendAfterResponse, ServicesDep
from core.models import Escalation, EscalationKind, EscalationStatus
from core.operator_desk import (
    DESK_TIMEZONE,
    DeskRefused,
    OperatorDesk,
    Refusal,
    mask_phone_last4,
)
from core.operators import OperatorRepository, SignInThrottle
from core.proxies import client_address, parse_networks
from core.recovery import Purpose
from core.services import Services
from gateway.console.sessions import ConsoleSession, ConsoleSessions

log = structlog.get_logger(__name__)

SESSION_COOKIE = "eirc_console"
LOGIN_COOKIE = "eirc_console_login"
COOKIE_PATH = "/console"
LOGIN_PATH = "/console/login"
# Fields longer than this are nobody's username or password.
MAX_FIELD = 256

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))


def _local_time(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(DESK_TIMEZONE).strftime("%d.%m.%Y %H:%M")


def _local_time_seconds(moment: datetime | None) -> str:
    if moment is None:
        return "—"
    return moment.astimezone(DESK_TIMEZONE).strftime("%d.%m %H:%M:%S")


def _duration(delta: timedelta | None) -> str:
    if delta is None:
        return "—"
    minutes = max(int(delta.total_seconds()) // 60, 0)
    if minutes < 1:
        return "меньше минуты"
    hours, minutes = divmod(minutes, 60)
    if hours >= 24:
        days, hours = divmod(hours, 24)
        return f"{days} д {hours} ч"
    return f"{hours} ч {minutes} мин" if hours else f"{minutes} мин"


def _detail_pairs(detail: str) -> list[tuple[str, str]]:
    """An audit row's detail JSON as (key, value) pairs to show; nulls left out."""
    try:
        data = json.loads(detail or "{}")
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    words = {True: "да", False: "нет"}
    return [
        (str(key), words[value] if isinstance(value, bool) else str(value))
        for key, value in sorted(data.items())
        if value is not None
    ]


def _waited(escalation: Escalation) -> str:
    end = escalation.closed_at or utcnow()
    return _duration(end - escalation.created_at)


templates.env.filters["local_time"] = _local_time
templates.env.filters["local_time_s"] = _local_time_seconds
templates.env.filters["detail_pairs"] = _detail_pairs
templates.env.filters["duration"] = _duration
templates.env.filters["waited"] = _waited
templates.env.filters["phone_last4"] = mask_phone_last4


class SignInRequired(Exception):
    """No valid session: pages redirect to sign-in, the polled fragment answers 401."""


class ConsoleForbidden(Exception):
    """A 403 page: `reason` is "csrf" or "role"."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


router = APIRouter(prefix="/console", include_in_schema=False)

# Case numbers are database ids: anything beyond a 32-bit id is refused before any query.
CaseId = Annotated[int, PathParam(ge=1, le=2**31 - 1)]


# -- dependencies -----------------------------------------------------------------------------


def console_sessions(services: ServicesDep) -> ConsoleSessions:
    """The session store."""
    return ConsoleSessions(
        services.redis, services.keyring, services.settings.console_session_minutes * 60
    )


SessionsDep = Annotated[ConsoleSessions, Depends(console_sessions)]


async def signed_in(request: Request, sessions: SessionsDep, db: DbSession) -> ConsoleSession:
    """The operator of this request; a disabled operator's session ends here."""
    session_id = request.cookies.get(SESSION_COOKIE)
    session = await sessions.load(session_id)
    if session is None:
        raise SignInRequired
    operator = await OperatorRepository(db).get(session.username)
    if operator is None or not operator.active:
        await sessions.end(session_id)
        raise SignInRequired
    return session


SignedIn = Annotated[ConsoleSession, Depends(signed_in)]


async def checked_form(request: Request, session: SignedIn) -> FormData:
    """The posted form, once its CSRF token matched the session's (constant-time)."""
    form = await request.form()
    token = form.get("csrf_token")
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode("utf-8", "replace"), session.csrf_token.encode("utf-8")
    ):
        log.warning("console.csrf_refused", operator=session.username, path=request.url.path)
        raise ConsoleForbidden("csrf")
    return form


CheckedForm = Annotated[FormData, Depends(checked_form)]


def supervisor_only(session: SignedIn) -> ConsoleSession:
    """Only supervisors pass."""
    if not session.is_supervisor:
        raise ConsoleForbidden("role")
    return session


Supervisor = Annotated[ConsoleSession, Depends(supervisor_only)]


def build_desk(services: ServicesDep, db: DbSession) -> OperatorDesk:
    """The desk for this request's transaction."""
    return OperatorDesk(
        session=db,
        settings=services.settings,
        keyring=services.keyring,
        directory=services.directory(db),
        delivery=Delivery(services.settings, db, services.keyring, services.dispatcher.notify),
        recovery=services.recovery(db),
        audit=AuditLog(db, services.keyring),
        redis=services.redis,
    )


Desk = Annotated[OperatorDesk, Depends(build_desk)]


def _field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def _render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _set_cookie(response: Response, services: Services, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path=COOKIE_PATH,
        secure=services.settings.console_cookies_secure,
        httponly=True,
        samesite="strict",
    )


def _client_address(request: Request, services: Services) -> str:
    # X-Forwarded-For only from GATEWAY_TRUSTED_PROXIES; by default the peer is the client.
    return client_address(
        request.client.host if request.client else None,
        ",".join(request.headers.getlist("x-forwarded-for")),
        parse_networks(services.settings.trusted_proxies),
    )


# -- sign-in ----------------------------------------------------------------------------------


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, services: ServicesDep, sessions: SessionsDep) -> Response:
    """The sign-in form, with a CSRF token bound to a short-lived cookie."""
    if await sessions.load(request.cookies.get(SESSION_COOKIE)):
        return RedirectResponse("/console/", status_code=303)
    return _login_form(request, services)


def _login_form(
    request: Request, services: Services, *, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    # Before sign-in there is no session to hold the token: the token is a cookie of its own
    # and the form must carry the same value (a cross-site page can set neither).
    token = secrets.token_urlsafe(32)
    response = _render(
        request, "login.html", {"csrf_token": token, "error": error}, status_code=status_code
    )
    _set_cookie(response, services, LOGIN_COOKIE, token, 3600)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request, services: ServicesDep, db: DbSession, sessions: SessionsDep
) -> Response:
    """Check the password, rate limited per username and per client address."""
    form = await request.form()
    token, expected = _field(form, "csrf_token"), request.cookies.get(LOGIN_COOKIE, "")
    if not token or not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ConsoleForbidden("csrf")
    username, password = _field(form, "username"), _field(form, "password")
    throttle = SignInThrottle(services.redis, services.settings, services.keyring)
    if not await throttle.attempt(username, _client_address(request, services)):
        log.warning("console.signin_limited")
        return _login_form(request, services, error="limited", status_code=429)
    operator = await OperatorRepository(db).authenticate(username, password)
    if operator is None:
        log.info("console.signin_refused")
        return _login_form(request, services, error="refused", status_code=401)
    await throttle.forget(operator.username)
    session_id, _ = await sessions.create(operator)
    await AuditLog(db, services.keyring).record(
        "operator.signed_in", channel="console", session_ref="console", operator=operator.username
    )
    response = RedirectResponse("/console/", status_code=303)
    _set_cookie(response, services, SESSION_COOKIE, session_id, sessions.lifetime_seconds)
    response.delete_cookie(LOGIN_COOKIE, path=COOKIE_PATH)
    return response


@router.post("/logout")
async def logout(
    request: Request,
    form: CheckedForm,
    session: SignedIn,
    sessions: SessionsDep,
    services: ServicesDep,
    db: DbSession,
) -> Response:
    """End the session server-side and drop the cookie."""
    await sessions.end(request.cookies.get(SESSION_COOKIE))
    await AuditLog(db, services.keyring).record(
        "operator.signed_out", channel="console", session_ref="console", operator=session.username
    )
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=COOKIE_PATH)
    return response


# -- queue ------------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
async def queue_page(request: Request, session: SignedIn, desk: Desk) -> HTMLResponse:
    """Waiting and in-progress cases, oldest first; the rows refresh themselves."""
    return _render(
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
    return _render(request, "_queue_rows.html", {"me": session, "cases": await desk.queue()})


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
        return _render(request, "error.html", {"me": session, "reason": "not_found"}, 404)
    mine = (
        escalation.status is EscalationStatus.in_progress
        and escalation.operator == session.username
    )
    return _render(
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
            account_number=_field(form, "account_number"),
            identity_confirmed=_field(form, "identity_confirmed") == "yes",
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


@router.get("/supervisor", response_class=HTMLResponse)
async def supervisor_page(request: Request, session: Supervisor, desk: Desk) -> HTMLResponse:
    """Counts by status, kind and reason; waiting times; resolved today per operator."""
    return _render(request, "supervisor.html", {"me": session, "stats": await desk.stats()})
