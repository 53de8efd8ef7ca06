"""Redis bytes per active call (DESIGN §9: ≤ 1 KiB), on the real redis-server."""

from __future__ import annotations

from redis.asyncio import Redis

from tests.conftest import Gateway
from tests.ivr.test_webhooks import at_code_entry

KIB = 1024


async def test_a_call_holds_at_most_a_kib_of_redis_just_after_the_code_was_sent(
    gateway: Gateway, redis: Redis
) -> None:
    """Every key the call made, measured with MEMORY USAGE (the key, its value, Redis's own
    object headers), the gateway-wide budget logs shared with the other calls counted whole."""
    await redis.flushall()
    await at_code_entry(gateway)
    keys = [str(key) for key in await redis.keys("*")]
    sizes = {key: int(await redis.memory_usage(key, samples=0) or 0) for key in keys}
    assert any(key.startswith("call:") for key in keys), keys
    assert any(key.startswith("attempt:") for key in keys), keys
    assert sum(sizes.values()) <= KIB, sizes
    # One key for the call and one for its attempt, code and cool-down (core/recovery/codes.py).
    assert not [key for key in keys if key.split(":")[0] in ("code", "cooldown")], keys
    # Compact encodings: short strings and listpacks, never a hash table or a skip list.
    for key in keys:
        encoding = await redis.object("encoding", key)
        assert encoding in ("listpack", "embstr", "int", "raw"), (key, encoding)
