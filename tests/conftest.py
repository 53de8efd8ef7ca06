"""Shared fixtures: settings on a temporary database and a real Redis, the app, signed webhooks."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import httpx
import pytest
import structlog
from alembic.script import ScriptDirectory
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from core.accounts.directory import AccountDirectory, SqlAccountDirectory, new_temporary_password
from core.accounts.importer import import_accounts_csv
from core.accounts.passwords import use_fast_hashing_for_tests
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import alembic_config, upgrade_database
from core.platform.settings import MessengerKind, Settings
from gateway.app import create_app
from tests.support.fakes import RecordingMessenger
from tests.support.twilio_driver import Call, Twilio

pytest_plugins = [
    "tests.support.servers",
    "tests.support.smtp_server",
    "tests.support.cabinet_server",
]


class CabinetSignIn(Protocol):
    """The reference cabinet's sign-in page (tests/support/cabinet_server.py imports this module)."""

    async def sign_in(self, account: str, password: str) -> str:
        """Where a sign-in leads ("" refused)."""
        ...


AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_BASE_URL = "https://hotline.eirc.example"

# Account numbers and phones used across the tests.
MOBILE_ONLY = "1000000001"
LANDLINE_ONLY = "1000000002"
TWO_MOBILES_EMAIL = "1000000003"
MOBILE = "+79123456789"
LANDLINE = "+74951234567"
SECOND_MOBILE = "+79221054419"
UNKNOWN = "1999999999"

ACCOUNTS_CSV = f"""account_number,login,full_name,phones,email
{MOBILE_ONLY},ivanova.mv,Иванова Мария Викторовна,{MOBILE},
{LANDLINE_ONLY},petrov.as,Петров Алексей Сергеевич,{LANDLINE},
{TWO_MOBILES_EMAIL},smirnova.ea,Смирнова Елена Андреевна,+79037771230;{SECOND_MOBILE},e.smirnova@example.ru
"""

use_fast_hashing_for_tests()


async def set_temporary_password(
    directory: AccountDirectory, settings: Settings, account: str, now: datetime | None = None
) -> str:
    """Have the directory store a fresh temporary password, as a recovery would; returns it."""
    temporary = new_temporary_password(
        settings, channel="console", reference=f"r-test-{secrets.token_hex(6)}", now=now
    )
    await directory.issue_temporary_password(account, temporary)
    return temporary.password


@pytest.fixture
def settings(suite_database_url: str, redis_url: str) -> Settings:
    """Test settings: a fresh database (a SQLite file, or PostgreSQL with `--database=postgresql`,
    see tests/support/servers.py), the real Redis server, outbox messenger."""
    return Settings(
        _env_file=None,
        database_url=suite_database_url,
        redis_url=redis_url,
        public_base_url=PUBLIC_BASE_URL,
        twilio_auth_token=AUTH_TOKEN,
        messenger=MessengerKind.outbox,
        code_resend_cooldown_seconds=30,
        # In-process tests send at once; the timing test runs the production default.
        dispatch_delay_ms=0,
    )


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """The real Redis server, emptied before the test."""
    client = Redis.from_url(redis_url, decode_responses=True)
    await client.flushdb()
    yield client
    await client.aclose()


@functools.cache
def head_revision() -> str | None:
    """The migrations' head revision."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def at_head(engine: AsyncEngine) -> bool:
    """Whether the database already has every migration (the suite's template copies do)."""
    try:
        async with engine.connect() as connection:
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    except DBAPIError:
        return False
    return version is not None and version == head_revision()


async def seed_accounts(settings: Settings, csv_text: str = ACCOUNTS_CSV) -> None:
    """Migrate the database (unless it is at head already) and import accounts."""
    engine = create_engine(settings.database_url)
    if not await at_head(engine):
        await upgrade_database(settings.database_url)
    async with transaction(create_sessionmaker(engine)) as session:
        await import_accounts_csv(session, io.StringIO(csv_text), settings)
    await engine.dispose()


@dataclass
class Gateway:
    """The app under test, a signed-webhook client and what it sent."""

    app: FastAPI
    twilio: Twilio
    messenger: RecordingMessenger
    settings: Settings
    # The reference cabinet, when it is the accounts directory (tests/support/cabinet_server.py).
    cabinet: CabinetSignIn | None = None

    async def password_check(self, account: str, password: str) -> tuple[bool, bool]:
        """Whether the directory accepts a password: (accepted, change required)."""
        if self.cabinet is not None:
            # The cabinet's own sign-in is the check (§11).
            landing = await self.cabinet.sign_in(account, password)
            return bool(landing), landing == "/change-password"
        engine = create_engine(self.settings.database_url)
        try:
            async with transaction(create_sessionmaker(engine)) as session:
                check = await SqlAccountDirectory(session, self.settings).verify_password(
                    account, password
                )
        finally:
            await engine.dispose()
        return check.accepted, check.change_required

    def call(self, caller: str = MOBILE) -> Call:
        """A new inbound call."""
        return Call(self.twilio, caller=caller)

    async def settle(self) -> None:
        """Wait until what the requests so far queued is sent (every request through `twilio`
        already waits for this: `settled_client`)."""
        await settle_app(self.app)


async def settle_app(app: FastAPI) -> None:
    """Wait until nothing due is left unsent and no send is in flight: the sweeper may hold a
    row a request released (our drain then finds it claimed and returns before it is sent)."""
    dispatcher = app.state.services.dispatcher
    for _ in range(200):
        if not dispatcher.busy:
            # One read when nothing is due (most requests): no drain, no write lock.
            due = await dispatcher.seconds_until_due()
            if due is None or due > 0:
                return
            if await dispatcher.drain():
                continue
        await asyncio.sleep(0.05)


@asynccontextmanager
async def settled_client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app whose every response waits until what the request queued is
    sent, so a test never reads the messenger while the dispatcher's sweeper holds a row."""

    async def settle_after(_response: httpx.Response) -> None:
        await settle_app(app)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://gateway.internal",
        event_hooks={"response": [settle_after]},
    ) as http:
        yield http


@pytest.fixture
async def gateway(sql_gateway: Gateway) -> Gateway:
    """The gateway on its own accounts tables (modules may parametrize it: test_*_recovery.py)."""
    return sql_gateway


@pytest.fixture
async def sql_gateway(settings: Settings, redis: Redis) -> AsyncIterator[Gateway]:
    """The real app with its lifespan, on a migrated and seeded database."""
    await seed_accounts(settings)
    messenger = RecordingMessenger()
    app = create_app(settings, messenger=messenger)
    async with app.router.lifespan_context(app), settled_client(app) as http:
        yield Gateway(app, Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), messenger, settings)


async def queued_emails(settings: Settings, to: str) -> list[str]:
    """E-mail texts queued in the outbox for the billing centre's mailer."""
    from sqlalchemy import select

    from core.delivery.outbox import readable_body
    from core.models import OutboundChannel, OutboxMessage
    from core.platform.crypto import Keyring

    engine = create_engine(settings.database_url)
    async with create_sessionmaker(engine)() as session:
        rows = (
            await session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.channel == OutboundChannel.email, OutboxMessage.to_number == to
                )
            )
        ).all()
    await engine.dispose()
    return [readable_body(row, Keyring(settings)) for row in rows]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """For tests that set up the gateway's logging on a captured stderr: put the old one back.

    Both halves: structlog's sink, and the root handler and level that stdlib logging (the
    libraries) writes through; a handler left on a closed capture stream breaks later tests.
    """
    saved = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**saved)
    root.handlers, root.level = handlers, level
