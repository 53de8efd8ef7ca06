"""Console sign-in and sign-out (the session cookie, the throttle, the CSRF token)."""

from __future__ import annotations

import hmac
import secrets

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from console.deps import (
    COOKIE_PATH,
    LOGIN_COOKIE,
    LOGIN_PATH,
    SESSION_COOKIE,
    CheckedForm,
    ConsoleForbidden,
    SessionsDep,
    SignedIn,
    client_address_of,
    form_field,
    render,
    set_cookie,
)
from core.audit.log import AuditLog
from core.operators.repository import OperatorRepository, SignInThrottle
from core.platform.container import Services
from core.web.deps import DbSession, ServicesDep

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/console", include_in_schema=False)


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
    response = render(
        request, "login.html", {"csrf_token": token, "error": error}, status_code=status_code
    )
    set_cookie(response, services, LOGIN_COOKIE, token, 3600)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request, services: ServicesDep, db: DbSession, sessions: SessionsDep
) -> Response:
    """Check the password, rate limited per username and per client address."""
    form = await request.form()
    token, expected = form_field(form, "csrf_token"), request.cookies.get(LOGIN_COOKIE, "")
    if not token or not expected or not hmac.compare_digest(token.encode(), expected.encode()):
        raise ConsoleForbidden("csrf")
    username, password = form_field(form, "username"), form_field(form, "password")
    throttle = SignInThrottle(services.redis, services.settings, services.keyring)
    if not await throttle.attempt(username, client_address_of(request, services)):
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
    set_cookie(response, services, SESSION_COOKIE, session_id, sessions.lifetime_seconds)
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
