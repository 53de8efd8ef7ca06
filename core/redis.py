"""The Redis client: a real server, or the in-process stand-in for the demo."""

from __future__ import annotations

from redis.asyncio import Redis


def create_redis(url: str) -> Redis:
    """Connect to Redis; `memory://` gives fakeredis for the single-process demo."""
    if url.startswith("memory://"):
        import fakeredis

        client: Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        return client
    return Redis.from_url(
        url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
    )
