"""Rate limits in Redis (§6.4): sliding windows, checked and counted by one Lua script.

Each limited subject (a caller number, an account number, a destination phone, an SMS sender or
recovery for replies, the whole gateway, or an operator console sign-in name or address) has a
sorted set of event times. One script drops the events older than the window, compares the
count with the limit and records the new event, for every key of a request at once: 20
concurrent requests against a limit of 5 let exactly 5 through, and a request that trips one
of its limits is recorded in none of them.

Why a sliding log rather than fixed windows: a fixed hour lets twice the budget through around
its boundary (5 codes at 10:59, 5 more at 11:00), and for the toll-fraud breaker that double
burst comes exactly when it matters. The log is exact and stays small: a refused event is not
recorded, so a key never holds more members than its limit, and it expires with its window.
The hourly and daily limits of an account share one log (the hour is its last 3600 s), and key
names and members are short: every active call holds a few of these keys (DESIGN §9, ≤ 1 KiB).

Keys hold keyed references (`Keyring.reference`), never a phone or account number. They share
one hash tag, so the multi-key script also runs on Redis Cluster.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import structlog
from prometheus_client import Counter
from redis.asyncio import Redis

from core.kit.phones import mask_account, mask_phone
from core.platform.crypto import Keyring
from core.platform.redis import script
from core.platform.settings import Settings

log = structlog.get_logger(__name__)

HOUR_SECONDS = 3600
SIGNIN_WINDOW_SECONDS = 15 * 60
DAY_SECONDS = 24 * HOUR_SECONDS
KEY_PREFIX = "rate:{rl}:"


class Limit(StrEnum):
    """The named limits; the metric's label vocabulary."""

    caller_starts = "caller_starts"
    account_sends_hour = "account_sends_hour"
    account_sends_day = "account_sends_day"
    # The same thresholds for requests that deliver nothing (no phone on file, or a sender
    # who is not the mobile on file), keyed by account *and* requester: a stranger meets the
    # limit as a resident would, and spends none of the account's own (§6.12).
    requester_account_hour = "requester_account_hour"
    requester_account_day = "requester_account_day"
    destination_sends = "destination_sends"
    # Codes to one number range (the number without its last 4 digits, §6.14).
    prefix_sends = "prefix_sends"
    # The SMS-pumping breaker (every code SMS) and the toll-fraud breaker (every code call).
    global_outbound = "global_outbound"
    global_calls = "global_calls"
    # The share of each budget that sends to destinations that had a code in the last hour may
    # use; the rest is kept for everyone else (§6.17).
    global_outbound_repeat = "global_outbound_repeat"
    global_calls_repeat = "global_calls_repeat"
    # SMS replies (§6.14): per sender without a recovery, per recovery, and all together.
    sender_replies = "sender_replies"
    recovery_replies = "recovery_replies"
    global_replies = "global_replies"
    # Operator console sign-in attempts, per username and per client address.
    signin_user = "signin_user"
    signin_address = "signin_address"
    # Operators' desk PIN checks (§6.11): per calling number, and from unrecognised numbers.
    desk_signin_caller = "desk_signin_caller"
    desk_signin_unrecognised = "desk_signin_unrecognised"
    # Console credential sends (§6.15): per operator, per account number.
    console_sends_operator = "console_sends_operator"
    console_sends_account = "console_sends_account"


# The log each limit counts in: short names, and an account's hour and day in one log.
LOG_NAMES: Mapping[Limit, str] = {
    Limit.caller_starts: "c",
    Limit.account_sends_hour: "a",
    Limit.account_sends_day: "a",
    Limit.requester_account_hour: "q",
    Limit.requester_account_day: "q",
    Limit.destination_sends: "d",
    Limit.prefix_sends: "p",
    Limit.global_outbound: "g",
    Limit.global_calls: "gc",
    Limit.global_outbound_repeat: "g2",
    Limit.global_calls_repeat: "gc2",
    Limit.sender_replies: "r",
    Limit.recovery_replies: "ra",
    Limit.global_replies: "rg",
    Limit.signin_user: "su",
    Limit.signin_address: "sa",
    Limit.desk_signin_caller: "dc",
    Limit.desk_signin_unrecognised: "du",
    Limit.console_sends_operator: "co",
    Limit.console_sends_account: "ca",
}
# Budgets of the whole gateway: one log each, no subject.
GLOBAL_LIMITS = frozenset(
    {
        Limit.global_outbound,
        Limit.global_calls,
        Limit.global_outbound_repeat,
        Limit.global_calls_repeat,
        Limit.global_replies,
    }
)

_REPEAT_SHARES = frozenset({Limit.global_outbound_repeat, Limit.global_calls_repeat})
# Limits of the whole gateway rather than of one subject: one log each.
GATEWAY_WIDE = GLOBAL_LIMITS | {Limit.desk_signin_unrecognised}

RATE_LIMITED = Counter(
    "gateway_rate_limited",
    "Requests refused by a rate limit (§6.4), by limit.",
    ["limit"],
)
for _limit in Limit:
    RATE_LIMITED.labels(limit=_limit)  # every limit shows in /metrics, tripped or not

# A subject's log (a caller, an account, a phone…) is a string of 8-byte events: the time in ms
# (6 bytes, big-endian) and a 2-byte tag that tells events of one millisecond apart. Every
# active call holds a few of these, and a short string costs about half the bytes of a sorted
# set (DESIGN §9, ≤ 1 KiB a call); they hold at most a limit's worth of events. The logs of the
# whole gateway (budgets of thousands an hour) stay sorted sets.
#
# KEYS: one per limit checked (a key may repeat: two limits over one log). ARGV: now (ms), the
# event's member (12 hex digits; the packed logs take its first 4 as the tag), record (1) or
# only look (0), then a (limit, window ms, condition, counts, packed) quintuple per key: a
# condition i > 0 applies the check only when log KEYS[i] is not empty (a destination that had
# a code in its window); counts 0 looks at the log without recording in it (a budget that a
# request which sends nothing must respect, but not spend); packed 1 for a subject's string log,
# 0 for a sorted set. Returns {0, 0} when every applying limit has room (and, when recording,
# the event is added once to each log a counting check applied to), else {the 1-based index of
# the first full limit, ms until it has room again}. A log is trimmed to the longest window
# counted in it.
PACKED_EVENT_BYTES = 8
_ACQUIRE = """
local now = tonumber(ARGV[1])
local function arg(i, k) return ARGV[3 + 5 * (i - 1) + k] end
local function tag(member)
  return string.char(tonumber(string.sub(member, 1, 2), 16), tonumber(string.sub(member, 3, 4), 16))
end
local longest, packed, times = {}, {}, {}
for i, key in ipairs(KEYS) do
  local window = tonumber(arg(i, 2))
  if not longest[key] or window > longest[key] then longest[key] = window end
  packed[key] = arg(i, 5) == '1'
end
for key, window in pairs(longest) do
  if packed[key] and redis.call('TYPE', key)['ok'] == 'zset' then
    -- A log written as a sorted set before an upgrade: packed once, its TTL kept.
    local ttl = redis.call('PTTL', key)
    local old = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    local parts = {}
    for j = 1, #old, 2 do
      parts[#parts + 1] = struct.pack('>I6', tonumber(old[j + 1])) .. tag(old[j])
    end
    redis.call('DEL', key)
    if ttl < 1 then ttl = window end
    if #parts > 0 then redis.call('SET', key, table.concat(parts), 'PX', ttl) end
  end
  if packed[key] then
    local raw = redis.call('GET', key)
    local kept, trimmed = {}, false
    if raw then
      for at = 1, #raw - 7, 8 do
        local time = struct.unpack('>I6', raw, at)
        if time > now - window then
          kept[#kept + 1] = {time, string.sub(raw, at, at + 7)}
        else
          trimmed = true
        end
      end
    end
    times[key] = kept
    if trimmed then
      if #kept == 0 then
        redis.call('DEL', key)
      else
        local parts = {}
        for j, event in ipairs(kept) do parts[j] = event[2] end
        redis.call('SET', key, table.concat(parts), 'KEEPTTL')
      end
    end
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  end
end
local function since_sorted(key, since)
  local found = {}
  for _, event in ipairs(times[key]) do
    if event[1] > since then found[#found + 1] = event[1] end
  end
  table.sort(found)
  return found
end
local applies = {}
for i, key in ipairs(KEYS) do
  local condition = tonumber(arg(i, 3))
  local recent = true
  if condition > 0 then
    local other = KEYS[condition]
    if packed[other] then recent = #times[other] > 0
    else recent = redis.call('ZCARD', other) > 0 end
  end
  if recent then
    local window = tonumber(arg(i, 2))
    local limit = tonumber(arg(i, 1))
    local since = now - window
    local count, oldest
    if packed[key] then
      local found = since_sorted(key, since)
      count = #found
      oldest = found[count - limit + 1]
    else
      count = redis.call('ZCOUNT', key, '(' .. since, '+inf')
      if count >= limit then
        local first = redis.call('ZRANGEBYSCORE', key, '(' .. since, '+inf', 'WITHSCORES',
          'LIMIT', count - limit, 1)
        oldest = tonumber(first[2])
      end
    end
    if count >= limit then
      -- Room again once the oldest event that keeps the log full leaves the window.
      local wait = window
      if oldest then wait = oldest + window - now end
      return {i, wait}
    end
    if arg(i, 4) == '1' then applies[key] = true end
  end
end
if ARGV[3] == '1' then
  for key, window in pairs(longest) do
    if applies[key] then
      if packed[key] then
        redis.call('APPEND', key, struct.pack('>I6', now) .. tag(ARGV[2]))
        redis.call('PEXPIRE', key, window)
      else
        redis.call('ZADD', key, now, ARGV[2])
        redis.call('PEXPIRE', key, window)
      end
    end
  end
end
return {0, 0}
"""

# KEYS: the logs an event was recorded in. ARGV: its time (ms) and member. Takes the event
# back out of each (the first event of that time and tag, in a packed log).
_RELEASE = """
local now = tonumber(ARGV[1])
local event = struct.pack('>I6', now) .. string.char(tonumber(string.sub(ARGV[2], 1, 2), 16),
  tonumber(string.sub(ARGV[2], 3, 4), 16))
for _, key in ipairs(KEYS) do
  if redis.call('TYPE', key)['ok'] == 'zset' then
    redis.call('ZREM', key, ARGV[2])
  else
    local raw = redis.call('GET', key)
    if raw then
      for at = 1, #raw - 7, 8 do
        if string.sub(raw, at, at + 7) == event then
          local rest = string.sub(raw, 1, at - 1) .. string.sub(raw, at + 8)
          if #rest == 0 then redis.call('DEL', key)
          else redis.call('SET', key, rest, 'KEEPTTL') end
          break
        end
      end
    end
  end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Rule:
    """At most `limit` events in any `window_seconds`."""

    limit: int
    window_seconds: int


def _repeat_share(budget: int, settings: Settings) -> int:
    return max(1, budget * (100 - settings.rate_limit_global_reserve_percent) // 100)


def rules(settings: Settings) -> Mapping[Limit, Rule]:
    """Every limit with its threshold and window, from the settings."""
    account_hour = settings.rate_limit_account_sends_per_hour
    account_day = settings.rate_limit_account_sends_per_day
    sms_budget = settings.rate_limit_global_outbound_per_hour
    call_budget = settings.rate_limit_global_calls_per_hour
    return {
        Limit.caller_starts: Rule(settings.rate_limit_caller_starts_per_hour, HOUR_SECONDS),
        Limit.account_sends_hour: Rule(account_hour, HOUR_SECONDS),
        Limit.account_sends_day: Rule(account_day, DAY_SECONDS),
        Limit.requester_account_hour: Rule(account_hour, HOUR_SECONDS),
        Limit.requester_account_day: Rule(account_day, DAY_SECONDS),
        Limit.destination_sends: Rule(settings.rate_limit_destination_sends_per_hour, HOUR_SECONDS),
        Limit.prefix_sends: Rule(settings.rate_limit_prefix_sends_per_hour, HOUR_SECONDS),
        Limit.global_outbound: Rule(sms_budget, HOUR_SECONDS),
        Limit.global_calls: Rule(call_budget, HOUR_SECONDS),
        Limit.global_outbound_repeat: Rule(_repeat_share(sms_budget, settings), HOUR_SECONDS),
        Limit.global_calls_repeat: Rule(_repeat_share(call_budget, settings), HOUR_SECONDS),
        Limit.sender_replies: Rule(settings.rate_limit_sender_replies_per_hour, HOUR_SECONDS),
        # A recovery lives well under an hour (the code's TTL and some): the hour covers it.
        Limit.recovery_replies: Rule(settings.rate_limit_replies_per_recovery, HOUR_SECONDS),
        Limit.global_replies: Rule(settings.rate_limit_global_replies_per_hour, HOUR_SECONDS),
        Limit.signin_user: Rule(settings.console_signin_per_user, SIGNIN_WINDOW_SECONDS),
        Limit.signin_address: Rule(settings.console_signin_per_ip, SIGNIN_WINDOW_SECONDS),
        Limit.desk_signin_caller: Rule(settings.operator_desk_signin_per_caller, HOUR_SECONDS),
        Limit.desk_signin_unrecognised: Rule(
            settings.operator_desk_signin_unrecognised, HOUR_SECONDS
        ),
        Limit.console_sends_operator: Rule(settings.console_sends_per_operator, HOUR_SECONDS),
        Limit.console_sends_account: Rule(settings.console_sends_per_account, DAY_SECONDS),
    }


@dataclass(frozen=True, slots=True)
class Check:
    """One limit for one subject (a number as given; only its keyed reference is stored)."""

    limit: Limit
    subject: str = ""
    # Applies only when the log of this call's check on that limit is not empty (§6.17).
    if_recent: Limit | None = None
    # Looks at the limit without counting the event in it.
    only_look: bool = False

    def __repr__(self) -> str:
        return f"Check({self.limit})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to `acquire`: the limit that tripped, or the recorded event."""

    tripped: Limit | None
    keys: tuple[str, ...] = ()
    member: str = ""
    # The event's time (ms): with the member, it names the event in a packed log.
    at_ms: int = 0
    # When refused: seconds until the limit that tripped has room again.
    wait_seconds: int = 0

    @property
    def allowed(self) -> bool:
        """Whether every limit had room (and the event now counts against each)."""
        return self.tripped is None


class RateLimiter:
    """Checks and counts events against the configured limits, atomically."""

    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        keyring: Keyring | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = redis
        self._rules = rules(settings)
        self._keyring = keyring or Keyring(settings)
        self._clock = clock
        self._script = script(redis, _ACQUIRE)
        self._release = script(redis, _RELEASE)

    def key(self, check: Check) -> str:
        """The Redis key of a check: its log's name and the subject's keyed reference."""
        if check.limit in GATEWAY_WIDE:
            return KEY_PREFIX + LOG_NAMES[check.limit]
        return f"{KEY_PREFIX}{LOG_NAMES[check.limit]}:{self._keyring.reference(check.subject)}"

    async def acquire(self, *checks: Check) -> Decision:
        """Count one event against every check, all or nothing; says which limit tripped."""
        # Unique within a log: the score holds the time, so the member needs only randomness.
        member = secrets.token_hex(6)
        now = self._now_ms()
        refused = await self._run(checks, member, now, record=True)
        if refused is not None:
            return refused
        # A check that did not apply (or only looked) recorded nothing: nothing to release there.
        recorded = (self.key(check) for check in checks if not check.only_look)
        return Decision(None, tuple(dict.fromkeys(recorded)), member, now)

    async def peek(self, *checks: Check) -> Decision:
        """Whether these limits have room, counting nothing."""
        return await self._run(checks, "", self._now_ms(), record=False) or Decision(None)

    async def events(self, check: Check) -> int:
        """How many events the log of `check` holds now (expired ones may linger until trimmed)."""
        key = self.key(check)
        if check.limit in GATEWAY_WIDE:
            return int(await self._redis.zcard(key))
        return int(await self._redis.strlen(key)) // PACKED_EVENT_BYTES

    async def release(self, decision: Decision) -> None:
        """Take back an event that did not happen after all (nothing was sent)."""
        if not decision.keys:
            return
        await self._release(keys=decision.keys, args=[decision.at_ms, decision.member])

    async def _run(
        self, checks: tuple[Check, ...], member: str, now_ms: int, *, record: bool
    ) -> Decision | None:
        if not checks:
            return None
        limits = [check.limit for check in checks]
        args: list[str | int] = [now_ms, member, 1 if record else 0]
        for check in checks:
            rule = self._rules[check.limit]
            condition = limits.index(check.if_recent) + 1 if check.if_recent else 0
            args += [
                rule.limit,
                rule.window_seconds * 1000,
                condition,
                0 if check.only_look else 1,
                0 if check.limit in GATEWAY_WIDE else 1,
            ]
        index, wait_ms = await self._script(keys=[self.key(check) for check in checks], args=args)
        if int(index) == 0:
            return None
        check = checks[int(index) - 1]
        self._report(check)
        return Decision(check.limit, wait_seconds=max(1, -(-int(wait_ms) // 1000)))

    def _report(self, check: Check) -> None:
        RATE_LIMITED.labels(limit=check.limit).inc()
        threshold = self._rules[check.limit].limit
        if check.limit in GLOBAL_LIMITS:
            # A budget of the whole gateway: someone must look now. The repeat share trips
            # first under an attack on a few destinations; the rest is kept for everyone else.
            level = log.warning if check.limit in _REPEAT_SHARES else log.error
            level("ratelimit.global_budget_exhausted", limit=check.limit, threshold=threshold)
            return
        if check.limit is Limit.desk_signin_unrecognised:
            # Strangers are guessing operators' desk PINs from many numbers.
            log.error("ratelimit.desk_guessing", limit=check.limit, threshold=threshold)
            return
        log.warning(
            "ratelimit.tripped",
            limit=check.limit,
            threshold=threshold,
            subject=_masked(check),
            ref=self._keyring.reference(check.subject),
        )

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _masked(check: Check) -> str:
    if check.limit in (
        Limit.account_sends_hour,
        Limit.account_sends_day,
        Limit.requester_account_hour,
        Limit.requester_account_day,
        Limit.console_sends_account,
    ):
        # The requester's half of the subject follows the account number: mask from the left.
        return mask_account(check.subject.partition(" ")[0])
    if check.limit in (
        Limit.signin_user,
        Limit.signin_address,
        Limit.recovery_replies,
        Limit.console_sends_operator,
    ):
        # A username, an address, an attempt or an operator: the keyed reference is enough.
        return "***"
    return mask_phone(check.subject)


__all__ = [
    "GLOBAL_LIMITS",
    "LOG_NAMES",
    "RATE_LIMITED",
    "Check",
    "Decision",
    "Limit",
    "RateLimiter",
    "Rule",
    "rules",
]
