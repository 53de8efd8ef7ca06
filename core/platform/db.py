"""Database engine, session factory and the declarative base."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, TypeDecorator, event
from sqlalchemy.dialects import registry
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from core.platform.settings import normalize_database_url
from core.platform.sqlite_driver import DRIVER as SQLITE_DRIVER

registry.register(f"sqlite.{SQLITE_DRIVER}", "core.platform.sqlite_driver", "OneHopSQLiteDialect")

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp that SQLite hands back aware too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime stored")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    """Declarative base for every table of the gateway."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UtcDateTime}  # noqa: RUF012 - SQLAlchemy reads it as is


# Connecting to PostgreSQL when no timeout was asked for (migrations, the CLI): asyncpg's own
# default is a minute.
CONNECT_TIMEOUT_SECONDS = 10.0


def _write_ahead_log(connection: Any, _record: object) -> None:
    """SQLite in WAL mode, every commit synced: readers never wait for a writer, and a commit
    is one append and one fsync of the log instead of a rollback journal written, synced and
    deleted (as durable: `synchronous=FULL`). The mode is kept in the file; the log is folded
    back into it as it grows and when the last connection closes."""
    cursor = connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    finally:
        cursor.close()


def create_engine(url: str, *, timeout_seconds: float | None = None) -> AsyncEngine:
    """Build the async engine for a database URL.

    `timeout_seconds` (the gateway's GATEWAY_DATABASE_TIMEOUT_SECONDS) bounds connecting, waiting
    for a pooled connection and each statement on PostgreSQL, so that a database that is down or
    stalled fails a webhook quickly. Migrations and the CLI pass none: a long migration or import
    statement must not be cut short. The URL may be written as operators do (`sqlite:///x.db`,
    `postgresql://...`): it gets the async driver here too, not only in Settings.
    """
    url = normalize_database_url(url)
    if url.startswith("sqlite"):
        # The driver begins a transaction at its first write (INSERT, UPDATE, DELETE), and
        # IMMEDIATE takes SQLite's one write lock right there, waiting for it (`timeout`). A
        # deferred BEGIN would let a transaction that wrote only a temporary table read the
        # main tables and ask for the write lock later; if another transaction holds that lock
        # and waits to commit behind the first one's read, SQLite fails one of them at once
        # with "database is locked" (the accounts import against the dispatcher did, in CI).
        # Reads outside a write stay lock-free and concurrent.
        # aiosqlite with one thread hop per statement (core/platform/sqlite_driver.py).
        parsed = make_url(url)
        if parsed.get_driver_name() == "aiosqlite":
            parsed = parsed.set(drivername=f"sqlite+{SQLITE_DRIVER}")
        engine = create_async_engine(
            parsed, connect_args={"timeout": 30, "isolation_level": "IMMEDIATE"}
        )
        event.listen(engine.sync_engine, "connect", _write_ahead_log)
        return engine
    connect_args: dict[str, float] = {}
    options: dict[str, float] = {}
    if make_url(url).get_driver_name() == "asyncpg":
        connect_args["timeout"] = timeout_seconds or CONNECT_TIMEOUT_SECONDS
        if timeout_seconds is not None:
            connect_args["command_timeout"] = timeout_seconds
    if timeout_seconds is not None:
        options["pool_timeout"] = timeout_seconds
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=20,
        connect_args=connect_args,
        **options,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Build the session factory; objects stay usable after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    """One unit of work: commit on success, roll back on error."""
    async with sessionmaker() as session, session.begin():
        yield session
