"""One-time codes: 6 digits from `secrets`, kept in Redis only as an HMAC, consumed atomically."""

from __future__ import annotations

import secrets
from enum import StrEnum

from redis.asyncio import Redis

from core.config import Settings
from core.crypto import Keyring

CODE_DIGITS = 6

# One round trip: compare, count a wrong entry, invalidate after the last allowed one,
# delete on success. Two concurrent correct submissions cannot both see the hash.
_VERIFY = """
local stored = redis.call('HGET', KEYS[1], 'h')
if not stored then return -1 end
if stored == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
local wrong = redis.call('HINCRBY', KEYS[1], 'w', 1)
if wrong >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return -2
end
return 0
"""


class CodeCheck(StrEnum):
    accepted = "accepted"
    wrong = "wrong"
    exhausted = "exhausted"
    missing = "missing"


_RESULTS = {1: CodeCheck.accepted, 0: CodeCheck.wrong, -2: CodeCheck.exhausted}


class CodeStore:
    """Issues and checks codes bound to one recovery attempt."""

    def __init__(self, redis: Redis, settings: Settings, keyring: Keyring) -> None:
        self._redis = redis
        self._settings = settings
        self._keyring = keyring
        self._verify = redis.register_script(_VERIFY)

    @staticmethod
    def _key(attempt_id: str) -> str:
        return f"code:{attempt_id}"

    def _digest(self, attempt_id: str, code: str) -> str:
        # 128 bits of the HMAC: far beyond the 10**6 codes, and half the bytes in Redis.
        return self._keyring.keyed_hash("code", f"{attempt_id}:{code}")[:32]

    async def issue(self, attempt_id: str) -> str:
        """Create a fresh code for an attempt, replacing any earlier one; returns it once."""
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        key = self._key(attempt_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={"h": self._digest(attempt_id, code), "w": 0})
            pipe.expire(key, self._settings.code_ttl_seconds)
            await pipe.execute()
        return code

    async def check(self, attempt_id: str, code: str) -> CodeCheck:
        """Check a submitted code; a correct one is consumed, the last wrong one invalidates."""
        # Malformed input is hashed too, so every path costs the same; it never matches.
        well_formed = len(code) == CODE_DIGITS and code.isdigit()
        digest = self._digest(attempt_id, code if well_formed else "malformed")
        if not well_formed:
            digest = "-"
        result = await self._verify(
            keys=[self._key(attempt_id)], args=[digest, self._settings.code_max_wrong]
        )
        return _RESULTS.get(int(result), CodeCheck.missing)

    async def discard(self, attempt_id: str) -> None:
        """Invalidate the code of an attempt."""
        await self._redis.delete(self._key(attempt_id))
