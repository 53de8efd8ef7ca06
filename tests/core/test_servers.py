"""The session's servers are the real thing, not stand-ins."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine


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
