"""One-time codes: 6 digits from `secrets`, kept in Redis only as an HMAC, consumed atomically."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from redis.asyncio import Redis

from core.platform.crypto import Keyring
from core.platform.redis import script
from core.platform.settings import Settings

CODE_DIGITS = 6

DAY_SECONDS = 24 * 3600

# An attempt is one Redis hash (DESIGN §9, ≤ 1 KiB a call): its record (fields "0", "1", …),
# its code (`h` the HMAC, `w` wrong entries, `d` delivered to a phone on file, `e` when it
# expires, in Unix seconds) and its resend cool-downs (`k<method>`: until when). One key rather
# than three, and every value short, so Redis keeps it as a compact listpack. The key lives as
# long as the attempt; the code's own lifetime is `e`, checked by the scripts against the
# server's clock.
CODE_FIELDS = ("h", "w", "d", "e")

# One round trip, one atomic script (§5): check the account's failure cap, compare, count a
# wrong entry, invalidate after the last allowed one, consume on success. Two concurrent
# correct submissions cannot both see the hash, and a burst of guesses cannot slip past the cap
# between a check and a count. Only a code that reached a phone on file (`d` = 1) counts a
# wrong entry toward the account's cap (§6.12): a code nobody received proves nothing about the
# resident. KEYS: the attempt, the account's failure count. ARGV: the submitted digest, wrong
# entries per code, the account's daily cap, the cap's window (s). Returns {result, seconds}: 1
# accepted, 0 wrong, -1 no code (used, expired or never issued: counts nothing), -2 exhausted,
# -3 capped (seconds: until the cap's window ends).
_VERIFY = """
local function drop() redis.call('HDEL', KEYS[1], 'h', 'w', 'd', 'e') end
local cap = tonumber(ARGV[3])
local failures = tonumber(redis.call('GET', KEYS[2]) or '0')
if failures >= cap then
  drop()
  return {-3, redis.call('TTL', KEYS[2])}
end
local stored = redis.call('HGET', KEYS[1], 'h')
if not stored then return {-1, 0} end
if tonumber(redis.call('HGET', KEYS[1], 'e') or '0') <= tonumber(redis.call('TIME')[1]) then
  drop()
  return {-1, 0}
end
if stored == ARGV[1] then
  drop()
  return {1, 0}
end
if redis.call('HGET', KEYS[1], 'd') == '1' then
  failures = redis.call('INCR', KEYS[2])
  if failures == 1 then redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4])) end
  if failures >= cap then
    drop()
    return {-3, redis.call('TTL', KEYS[2])}
  end
end
local wrong = redis.call('HINCRBY', KEYS[1], 'w', 1)
if wrong >= tonumber(ARGV[2]) then
  drop()
  return {-2, 0}
end
return {0, 0}
"""

# KEYS: the attempt. ARGV: the digest, delivered (0/1), the code's TTL (s). A new code replaces
# the old one and its wrong count; the key lives at least as long as the code.
_ISSUE = """
local ttl = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 'w', 0, 'd', ARGV[2],
  'e', tonumber(redis.call('TIME')[1]) + ttl)
if redis.call('TTL', KEYS[1]) < ttl then redis.call('EXPIRE', KEYS[1], ttl) end
return 1
"""

# KEYS: the attempt. ARGV: the field, the cool-down (s). 1 (and the cool-down starts) when none
# is running, else 0; the key lives at least as long as the cool-down.
_COOL_DOWN = """
local now = tonumber(redis.call('TIME')[1])
local seconds = tonumber(ARGV[2])
if tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0') > now then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], now + seconds)
if redis.call('TTL', KEYS[1]) < seconds then redis.call('EXPIRE', KEYS[1], seconds) end
return 1
"""

# KEYS: the attempt. Marks its code as not delivered, if the attempt still has one.
_WITHHELD = """
if redis.call('HEXISTS', KEYS[1], 'h') == 1 then redis.call('HSET', KEYS[1], 'd', 0) end
return 0
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
    """Keeps recovery attempts in Redis, and issues and checks the codes bound to them."""

    def __init__(self, redis: Redis, settings: Settings, keyring: Keyring) -> None:
        self._redis = redis
        self._settings = settings
        self._keyring = keyring
        self._verify = script(redis, _VERIFY)
        self._issue = script(redis, _ISSUE)
        self._cool_down = script(redis, _COOL_DOWN)
        self._withheld = script(redis, _WITHHELD)

    @staticmethod
    def key(attempt_id: str) -> str:
        """The Redis key of an attempt (its record, code and cool-downs)."""
        return f"attempt:{attempt_id}"

    def _digest(self, attempt_id: str, code: str) -> str:
        # 128 bits of the HMAC: far beyond the 10**6 codes, and half the bytes in Redis.
        return self._keyring.keyed_hash("code", f"{attempt_id}:{code}")[:32]

    async def open(self, attempt_id: str, record: Sequence[str | int], ttl_seconds: int) -> None:
        """Store an attempt's record (short values, one field each) for `ttl_seconds`."""
        key = self.key(attempt_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={str(index): value for index, value in enumerate(record)})
            pipe.expire(key, ttl_seconds)
            await pipe.execute()

    async def record(self, attempt_id: str) -> list[str] | None:
        """The record `open` stored, in order; None once the attempt is gone."""
        stored: dict[str, str] = await self._redis.hgetall(self.key(attempt_id))  # type: ignore[assignment]
        values = [(int(name), value) for name, value in stored.items() if name.isdigit()]
        return [value for _, value in sorted(values)] or None

    async def close(self, attempt_id: str) -> None:
        """Forget an attempt, with its code and cool-downs."""
        await self._redis.delete(self.key(attempt_id))

    async def cool_down(self, attempt_id: str, method: str, seconds: int) -> bool:
        """True when a code may be sent now by this method; starts its resend cool-down."""
        started = await self._cool_down(keys=[self.key(attempt_id)], args=[f"k{method}", seconds])
        return bool(started)

    async def end_cool_down(self, attempt_id: str, method: str) -> None:
        """Nothing was sent after all: the method may be used again at once."""
        await self._redis.hdel(self.key(attempt_id), f"k{method}")

    async def issue(self, attempt_id: str, *, delivered: bool) -> str:
        """Create a fresh code for an attempt, replacing any earlier one; returns it once.

        `delivered`: the code goes to a phone on file, so wrong entries count toward the
        account's cap; a code that goes nowhere is issued all the same (timing, §6.2).
        """
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        digest = self._digest(attempt_id, code)
        await self._issue(
            keys=[self.key(attempt_id)],
            args=[digest, int(delivered), self._settings.code_ttl_seconds],
        )
        return code

    async def withheld(self, attempt_id: str) -> None:
        """The code was not sent after all (opt-out, country): its wrong entries count nothing."""
        await self._withheld(keys=[self.key(attempt_id)])

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
            keys=[self.key(attempt_id), failures_key],
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
        await self._redis.hdel(self.key(attempt_id), *CODE_FIELDS)
