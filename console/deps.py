"""What the console's routers share: cookies, templates and their filters, the dependencies."""

from __future__ import annotations

import hmac
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import structlog
from fastapi import Depends, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import FormData

from console.sessions import ConsoleSession, ConsoleSessions
from core.audit.log import AuditLog
from core.delivery.outbox import Delivery
from core.escalations.desk import (
    DESK_TIMEZONE,
    OperatorDesk,
    mask_phone_last4,
)
from core.models import Escalation
from core.operators.repository import OperatorRepository
from core.platform.clock import utcnow
from core.platform.container import Services
from core.web.deps import DbSession, ServicesDep
from core.web.proxies import client_address, parse_networks

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


def form_field(form: FormData, name: str) -> str:
    value = form.get(name)
    return value[:MAX_FIELD] if isinstance(value, str) else ""


def render(
    request: Request,
    name: str,
    context: dict[str, Any],
    status_code: int = 200,
) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def set_cookie(response: Response, services: Services, name: str, value: str, age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=age,
        path=COOKIE_PATH,
        secure=services.settings.console_cookies_secure,
        httponly=True,
        samesite="strict",
    )


def client_address_of(request: Request, services: Services) -> str:
    # X-Forwarded-For only from GATEWAY_TRUSTED_PROXIES; by default the peer is the client.
    return client_address(
        request.client.host if request.client else None,
        ",".join(request.headers.getlist("x-forwarded-for")),
        parse_networks(services.settings.trusted_proxies),
    )


# -- sign-in ----------------------------------------------------------------------------------
