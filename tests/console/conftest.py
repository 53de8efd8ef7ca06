"""Console fixtures: operators, escalations and a signed-in browser-like HTTP client."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypeVar

import httpx
import pytest
from sqlalchemy import Select, select

from core.models import AuditEvent, Escalation, OperatorRole, OutboxMessage
from core.operators.repository import OperatorRepository
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from tests.conftest import MOBILE, Gateway
from tests.support.twilio_driver import Phone

OPERATOR = "ivanova"
SUPERVISOR = "petrov"
PASSWORD = "correct horse battery"
T = TypeVar("T")
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Small sign-in limits, so the throttle is reached in a few requests."""
    return settings.model_copy(update={"console_signin_per_user": 3, "console_signin_per_ip": 5})


async def add_operator(
    settings: Settings, username: str, role: OperatorRole = OperatorRole.operator
) -> None:
    """Create an operator with PASSWORD."""
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            await OperatorRepository(session).add(
                username, PASSWORD, display_name=username.title(), role=role
            )
    finally:
        await engine.dispose()


async def _all(settings: Settings, query: Select[T]) -> list[T]:
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            return list((await session.scalars(query)).all())
    finally:
        await engine.dispose()


async def escalations(settings: Settings) -> list[Escalation]:
    """Every escalation, oldest first."""
    return await _all(settings, select(Escalation).order_by(Escalation.id))


async def audit_events(settings: Settings, event: str) -> list[AuditEvent]:
    """Audit rows of one event name, oldest first."""
    return await _all(
        settings, select(AuditEvent).where(AuditEvent.event == event).order_by(AuditEvent.id)
    )


async def outbox(settings: Settings, to: str, purpose: str) -> list[OutboxMessage]:
    """Outbox rows to one number for one purpose, oldest first."""
    return await _all(
        settings,
        select(OutboxMessage)
        .where(OutboxMessage.to_number == to, OutboxMessage.purpose == purpose)
        .order_by(OutboxMessage.id),
    )


async def sms_callback_request(gateway: Gateway, account: str, sender: str = MOBILE) -> Escalation:
    """A resident texts a recovery request, then ОПЕРАТОР: a stored callback request."""
    phone = Phone(gateway.twilio, sender)
    await phone.text(f"ВОССТАНОВИТЬ {account}")
    await phone.text("ОПЕРАТОР")
    return (await escalations(gateway.settings))[-1]


def csrf_token(html: str) -> str:
    """The CSRF token of the first form on a page."""
    found = CSRF_FIELD.search(html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@dataclass
class ConsoleClient:
    """An operator's browser, as HTTP: keeps cookies, reads CSRF tokens off the pages."""

    http: httpx.AsyncClient

    async def sign_in(self, username: str, password: str = PASSWORD) -> httpx.Response:
        """Fill in the sign-in form."""
        page = await self.http.get("/console/login")
        assert page.status_code == 200
        return await self.http.post(
            "/console/login",
            data={"csrf_token": csrf_token(page.text), "username": username, "password": password},
        )

    async def post_form(self, page_path: str, action: str, **fields: str) -> httpx.Response:
        """Open a page and post one of its forms, with the page's CSRF token."""
        page = await self.http.get(page_path)
        assert page.status_code == 200, page.status_code
        return await self.http.post(action, data={"csrf_token": csrf_token(page.text), **fields})


@pytest.fixture
async def console(gateway: Gateway) -> AsyncIterator[ConsoleClient]:
    """A signed-out operator client on https (the cookies are Secure), with two operators."""
    await add_operator(gateway.settings, OPERATOR)
    await add_operator(gateway.settings, SUPERVISOR, OperatorRole.supervisor)
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(
        transport=transport, base_url="https://console.eirc.example"
    ) as http:
        yield ConsoleClient(http)


@pytest.fixture
async def operator(console: ConsoleClient) -> ConsoleClient:
    """The client signed in as an ordinary operator."""
    response = await console.sign_in(OPERATOR)
    assert response.status_code == 303
    return console
