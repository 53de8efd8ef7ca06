"""Alembic migrations: up from empty and down again, on SQLite and PostgreSQL, matching the models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from redis.asyncio import Redis
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from core.config import Settings
from core.db import Base, create_engine
from core.migrate import downgrade_database, upgrade_database
from gateway.app import create_app
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.fakes import RecordingMessenger
from tests.twilio_driver import Call, Twilio


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    yield url


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


async def test_upgrade_matches_the_models_and_downgrade_empties(database_url: str) -> None:
    await upgrade_database(database_url)
    engine = create_engine(database_url)
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
        assert await connection.run_sync(_tables) == set(Base.metadata.tables)
    await asyncio.to_thread(downgrade_database, database_url)
    async with engine.connect() as connection:
        assert await connection.run_sync(_tables) == set()
    await engine.dispose()


async def test_voice_recovery_on_postgresql(
    postgres_url: str, settings: Settings, redis: Redis
) -> None:
    engine = create_engine(postgres_url)
    async with engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    settings = settings.model_copy(update={"database_url": postgres_url})
    await seed_accounts(settings)
    messenger = RecordingMessenger()
    app = create_app(settings, messenger=messenger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            call = Call(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), caller=MOBILE)
            await call.start()
            for keys in ("1", MOBILE_ONLY + "#", "1", "1"):
                await call.press(keys)
            await call.press(messenger.to(MOBILE)[-1].body.split("код ")[1][:6])
    assert "Готово" in call.text
    assert "временный пароль" in messenger.to(MOBILE)[-1].body
