"""The session's servers are the real thing, not stand-ins."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from core.platform.settings import Settings


async def test_redis_url_is_a_real_redis_server(redis_url: str) -> None:
    client = Redis.from_url(redis_url, decode_responses=True)
    try:
        info = await client.info("server")
        await client.set("servers-test", "1", ex=60)
        value = await client.get("servers-test")
        await client.delete("servers-test")
    finally:
        await client.aclose()

    assert info["redis_version"]
    # Only a server really listening on that port reports it as its own.
    assert int(info["tcp_port"]) == urlsplit(redis_url).port
    assert value == "1"


@pytest.mark.postgres
async def test_postgres_url_connects(postgres_url: str) -> None:
    engine = create_async_engine(postgres_url)
    try:
        async with engine.connect() as connection:
            one = await connection.scalar(text("SELECT 1"))
            version = await connection.scalar(text("SHOW server_version"))
    finally:
        await engine.dispose()

    assert one == 1
    assert str(version).split(".")[0].isdigit()


async def test_the_settings_database_is_the_kind_the_run_asked_for(
    settings: Settings, database_kind: str
) -> None:
    """`--database=postgresql` really moves the suite to PostgreSQL (and the default is SQLite)."""
    assert make_url(settings.database_url).get_backend_name() == database_kind
    engine = create_async_engine(settings.database_url)
    try:
        async with engine.connect() as connection:
            if database_kind == "postgresql":
                # A database of its own, already migrated (a copy of the session's template).
                name = await connection.scalar(text("SELECT current_database()"))
                assert str(name).startswith("gateway_test_")
                assert await connection.scalar(text("SELECT count(*) FROM alembic_version")) == 1
            else:
                assert await connection.scalar(text("SELECT sqlite_version()"))
    finally:
        await engine.dispose()
