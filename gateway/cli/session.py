"""The CLI's one way into the database: migrate, engine, one transaction, dispose."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession

from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import upgrade_database
from core.platform.settings import Settings


@asynccontextmanager
async def cli_session(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A transaction on the settings' database, its schema brought up to date first.

    Commits when the block ends normally; the engine is disposed either way.
    """
    await upgrade_database(settings.database_url)
    engine = create_engine(settings.database_url)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            yield session
    finally:
        await engine.dispose()
