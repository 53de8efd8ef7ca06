"""Redis URLs: plain ones as redis-py reads them, Sentinel ones by our convention, a real Sentinel."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis
from redis.asyncio.sentinel import SentinelConnectionPool

from core.platform.redis import (
    RedisUrlError,
    SentinelUrl,
    create_redis,
    is_sentinel_url,
    parse_sentinel_url,
)
from tests.support.servers import REDIS_START_SECONDS, ServerProcess, free_port

SENTINEL_URLS = {
    "redis+sentinel://10.0.0.1:26379/gateway": SentinelUrl(
        sentinels=(("10.0.0.1", 26379),), service_name="gateway"
    ),
    "redis+sentinel://:s3cret@s1:5000,s2,s3:5002/gateway/2": SentinelUrl(
        sentinels=(("s1", 5000), ("s2", 26379), ("s3", 5002)),
        service_name="gateway",
        db=2,
        password="s3cret",
    ),
    "rediss+sentinel://app:p%40ss@[::1]:26380/mymaster?sentinel_password=watch": SentinelUrl(
        sentinels=(("::1", 26380),),
        service_name="mymaster",
        ssl=True,
        username="app",
        password="p@ss",
        sentinel_password="watch",
    ),
    "REDIS+SENTINEL://s1/gateway/0?sentinel_username=u&sentinel_password=p": SentinelUrl(
        sentinels=(("s1", 26379),),
        service_name="gateway",
        sentinel_username="u",
        sentinel_password="p",
    ),
}


@pytest.mark.parametrize(("url", "expected"), SENTINEL_URLS.items(), ids=range(len(SENTINEL_URLS)))
def test_sentinel_urls_are_parsed(url: str, expected: SentinelUrl) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url) == expected


BAD_SENTINEL_URLS = [
    "redis+sentinel://:hunter2@/gateway",  # no sentinel
    "redis+sentinel://:hunter2@s1:26379",  # no service name
    "redis+sentinel://:hunter2@s1:26379/gateway/zero",  # db not a number
    "redis+sentinel://:hunter2@s1:26379/gateway/0/extra",
    "redis+sentinel://:hunter2@s1:port/gateway",
    "redis+sentinel://:hunter2@s1:70000/gateway",
    "redis+sentinel://:hunter2@s1/gateway?socket_timeout=5",  # options we do not pass on
]


@pytest.mark.parametrize("url", BAD_SENTINEL_URLS)
def test_bad_sentinel_urls_are_refused_without_quoting_the_password(url: str) -> None:
    with pytest.raises(RedisUrlError) as refused:
        create_redis(url)
    assert "hunter2" not in str(refused.value)
    assert "GATEWAY_REDIS_URL" in str(refused.value)


def test_the_parsed_url_does_not_show_its_passwords() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:hunter2@s1/gateway?sentinel_password=hunter3")
    assert "hunter2" not in repr(parsed) and "hunter3" not in repr(parsed)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/0", "rediss://h/1", "unix:///run/r.sock"])
def test_plain_urls_are_not_sentinel_urls(url: str) -> None:
    assert not is_sentinel_url(url)


def test_an_unknown_scheme_is_refused_clearly() -> None:
    with pytest.raises(RedisUrlError, match="redis\\+sentinel://"):
        create_redis("http://user:hunter2@127.0.0.1:6379/0")


async def test_the_client_carries_the_timeout_and_one_retry() -> None:
    client = create_redis("redis://127.0.0.1:6379/3", timeout_seconds=0.25)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.25 and kwargs["socket_connect_timeout"] == 0.25
    assert kwargs["db"] == 3
    assert kwargs["retry"].get_retries() == 1
    await client.aclose()


async def test_a_sentinel_url_builds_a_sentinel_backed_client() -> None:
    client = create_redis("redis+sentinel://:pw@s1:5000,s2/gateway/4", timeout_seconds=0.5)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "gateway" and pool.is_master
    assert pool.connection_kwargs["db"] == 4 and pool.connection_kwargs["password"] == "pw"
    assert pool.connection_kwargs["socket_timeout"] == 0.5
    sentinels = pool.sentinel_manager.sentinels
    addresses = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in sentinels
    ]
    assert addresses == [("s1", 5000), ("s2", 26379)]
    await client.aclose()


# --- a real Sentinel in front of the session's Redis -------------------------------------------


def _sentinel_answers(port: int) -> bool:
    client = sync_redis.Redis(
        host="127.0.0.1", port=port, socket_timeout=1.0, socket_connect_timeout=1.0
    )
    try:
        masters = client.sentinel_masters()
        return "gateway" in masters
    except sync_redis.RedisError:
        return False
    finally:
        client.close()


@pytest.fixture
def sentinel_port(redis_url: str, tmp_path: Path) -> Iterator[int]:
    """`redis-server --sentinel` watching the session's Redis as master `gateway`."""
    executable = shutil.which("redis-server")
    assert executable is not None
    redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its configuration file
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor gateway 127.0.0.1 {redis_port} 1\n",
        encoding="utf-8",
    )
    server = ServerProcess(
        "redis-sentinel", [executable, str(config), "--sentinel"], tmp_path / "sentinel.log"
    )
    try:
        server.wait_until_ready(lambda: _sentinel_answers(port), REDIS_START_SECONDS)
        yield port
    finally:
        server.stop()


async def test_a_real_sentinel_leads_to_the_master(sentinel_port: int, redis_url: str) -> None:
    client = create_redis(f"redis+sentinel://127.0.0.1:{sentinel_port}/gateway/0")
    direct = create_redis(redis_url)
    try:
        await client.set("sentinel-test", "via sentinel", ex=60)
        assert await direct.get("sentinel-test") == "via sentinel"
        await direct.delete("sentinel-test")
    finally:
        await client.aclose()
        await direct.aclose()
