"""One-time codes: 6 digits from `secrets`, kept in Redis only as an HMAC, consumed atomically."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from core.config import Settings
from core.crypto import Keyring

CODE_DIGITS = 6

DAY_SECONDS = 24 * 3600

# One round trip, one atomic script (§5): check the account's failure cap, compare, count a
# wrong entry, invalidate after the last allowed one, delete on success. Two concurrent correct
# submissions cannot both see the hash, and a burst of guesses cannot slip past the cap between
# a check and a count. Only a code that reached a phone on file (`d` = 1) counts a wrong entry
# toward the account's cap (§6.12): a code nobody received proves nothing about the resident.
# KEYS: the code, the account's failure count. ARGV: the submitted digest, wrong entries per
# code, the account's daily cap, the cap's window (s). Returns {result, seconds}: 1 accepted,
# 0 wrong, -1 no code (used, expired or never issued: counts nothing), -2 exhausted, -3 capped
# (seconds: until the cap's window ends).
_VERIFY = """
local cap = tonumber(ARGV[3])
local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
if failures >= cap then
  redis.call('DEL', KEYS[1])
  return {-3, redis.call('TTL', KEYS[2])}
end
local stored = redis.call('HGET', KEYS[1], 'h')
if not stored then return {-1, 0} end
if stored == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return {1, 0}
end
if redis.call('HGET', KEYS[1], 'd') == '1' then
  failures = redis.call('INCR', KEYS[2])
  if failures == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end
  if failures >= cap then
    redis.call('DEL', KEYS[1])
    return {-3, redis.call('TTL', KEYS[2])}
  end
end
local wrong = redis.call('HINCRBY', KEYS[1], 'w', 1)
if wrong >= tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1])
  return {-2, 0}
end
return {0, 0}
"""


def well_formed_code(code: str) -> bool:
    """Exactly CODE_DIGITS digits: anything else is not worth a check (nor an attempt)."""
    return len(code) == CODE_DIGITS and code.isdigit()


class CodeCheck(StrEnum):
    accepted = "accepted"
    wrong = "wrong"
    exhausted = "exhausted"
    missing = "missing"
    # The account's failed verifications reached the daily cap (§6.5).
    capped = "capped"


_RESULTS = {
    1: CodeCheck.accepted,
    0: CodeCheck.wrong,
    -2: CodeCheck.exhausted,
    -3: CodeCheck.capped,
}


@dataclass(frozen=True, slots=True)
class Checked:
    """A code check's result; `wait_seconds` says when a capped account opens again."""

    result: CodeCheck
    wait_seconds: int = 0


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

    async def issue(self, attempt_id: str, *, delivered: bool) -> str:
        """Create a fresh code for an attempt, replacing any earlier one; returns it once.

        `delivered`: the code goes to a phone on file, so wrong entries count toward the
        account's cap; a code that goes nowhere is issued all the same (timing, §6.2).
        """
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        key = self._key(attempt_id)
        digest = self._digest(attempt_id, code)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping={"h": digest, "w": 0, "d": int(delivered)})
            pipe.expire(key, self._settings.code_ttl_seconds)
            await pipe.execute()
        return code

    async def withheld(self, attempt_id: str) -> None:
        """The code was not sent after all (opt-out, country): its wrong entries count nothing."""
        await self._redis.hset(self._key(attempt_id), "d", 0)

    async def check(self, attempt_id: str, code: str, failures_key: str) -> Checked:
        """Check a submitted code against the account's cap, atomically (§5).

        A correct one is consumed; a wrong one counts (toward the account's cap only when the
        code was delivered), and the last allowed wrong one invalidates the code.
        """
        # Malformed input is hashed too, so every path costs the same; it never matches.
        well_formed = well_formed_code(code)
        digest = self._digest(attempt_id, code if well_formed else "malformed")
        if not well_formed:
            digest = "-"
        result, seconds = await self._verify(
            keys=[self._key(attempt_id), failures_key],
            args=[
                digest,
                self._settings.code_max_wrong,
                self._settings.failed_verifications_per_day,
                DAY_SECONDS,
            ],
        )
        checked = _RESULTS.get(int(result), CodeCheck.missing)
        # A capped account always has a moment when it opens again, however close.
        wait = max(1, int(seconds)) if checked is CodeCheck.capped else 0
        return Checked(checked, wait)

    async def discard(self, attempt_id: str) -> None:
        """Invalidate the code of an attempt."""
        await self._redis.delete(self._key(attempt_id))
