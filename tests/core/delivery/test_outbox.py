"""The outbox keeps codes and passwords sealed at rest, and forgets them once delivered or expired."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis
from sqlalchemy import select, update
from typer.testing import CliRunner

from core.delivery.outbox import OutboxMessenger, purge_expired_secrets, readable_body
from core.models import OutboxMessage
from core.platform.clock import utcnow
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.settings import Settings
from gateway.app import create_app
from gateway.cli.main import app as cli
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.support.twilio_driver import Phone, Twilio


@pytest.fixture
async def outbox_phone(settings: Settings, redis: Redis) -> AsyncIterator[Phone]:
    """A phone texting a gateway whose messenger is the real outbox."""
    await seed_accounts(settings)
    app = create_app(settings, messenger=OutboxMessenger())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield Phone(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), MOBILE)


async def rows(settings: Settings) -> list[OutboxMessage]:
    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        found = list(
            (await session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))).all()
        )
    await engine.dispose()
    return found


async def test_code_and_password_are_sealed_at_rest(
    settings: Settings, outbox_phone: Phone
) -> None:
    await outbox_phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    keyring = Keyring(settings)
    [code_row] = await rows(settings)
    text = readable_body(code_row, keyring)
    code = re.search(r"\d{6}", text)
    assert code and code.group() not in code_row.body and "ЕИРЦ" not in code_row.body
    await outbox_phone.text(code.group())
    password_row = (await rows(settings))[-1]
    password = readable_body(password_row, keyring).split()[3]
    assert password_row.purpose == "password" and password not in password_row.body
    # Another key cannot read it.
    other = Keyring(settings.model_copy(update={"secret_key": SecretStr("x" * 40)}))
    assert readable_body(password_row, other).startswith("<unreadable")


async def test_delivered_secrets_are_purged(settings: Settings, outbox_phone: Phone) -> None:
    await outbox_phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    [row] = await rows(settings)
    params = {"MessageSid": row.provider_sid or "", "MessageStatus": "delivered"}
    response = await outbox_phone.twilio.post("/sms/status", params)
    assert response.status_code == 204
    [row] = await rows(settings)
    assert row.status == "delivered" and row.body == ""


async def test_expired_secrets_are_purged(settings: Settings, outbox_phone: Phone) -> None:
    await outbox_phone.text(f"ВОССТАНОВИТЬ {MOBILE_ONLY}")
    await outbox_phone.text("ПОМОЩЬ")  # a reply only: nothing in the outbox
    engine = create_engine(settings.database_url)
    sessionmaker = create_sessionmaker(engine)
    async with transaction(sessionmaker) as session:
        assert await purge_expired_secrets(session, settings) == 0  # still valid
        await session.execute(
            update(OutboxMessage).values(created_at=utcnow() - timedelta(minutes=11))
        )
        assert await purge_expired_secrets(session, settings) == 1
    await engine.dispose()
    assert [row.body for row in await rows(settings)] == [""]


def test_outbox_cli_lists_readable_texts(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def seed() -> None:
        await seed_accounts(settings)
        engine = create_engine(settings.database_url)
        async with transaction(create_sessionmaker(engine)) as session:
            session.add(
                OutboxMessage(
                    channel="sms",
                    to_number=MOBILE,
                    from_number="+78005550101",
                    body=Keyring(settings).seal("ЕИРЦ: код 123456. Никому его не говорите."),
                    purpose="code",
                )
            )
        await engine.dispose()

    asyncio.run(seed())
    monkeypatch.setenv("GATEWAY_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("GATEWAY_SECRET_KEY", settings.secret_key.get_secret_value())
    result = CliRunner().invoke(cli, ["outbox", "--json"])
    assert result.exit_code == 0, result.output
    [line] = result.output.strip().splitlines()
    assert json.loads(line)["text"] == "ЕИРЦ: код 123456. Никому его не говорите."
