"""Rate limits in Redis (§6.4): sliding windows, checked and counted by one Lua script.

Each limited subject (a caller number, an account number, a destination phone, the whole
gateway, or an operator console sign-in name or address) has a sorted set of event times. One
script drops the events older than the window, compares the count with the limit and records the
new event, for every key of a request at once: 20 concurrent requests against a limit of 5 let
exactly 5 through, and a request that trips one of its limits is recorded in none of them.

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

from core.config import Settings
from core.crypto import Keyring
from core.phones import mask_account, mask_phone

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
    destination_sends = "destination_sends"
    global_outbound = "global_outbound"
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
    Limit.destination_sends: "d",
    Limit.global_outbound: "g",
    Limit.signin_user: "su",
    Limit.signin_address: "sa",
    Limit.desk_signin_caller: "dc",
    Limit.desk_signin_unrecognised: "du",
    Limit.console_sends_operator: "co",
    Limit.console_sends_account: "ca",
}

# Limits of the whole gateway rather than of one subject: one log each.
GATEWAY_WIDE = frozenset({Limit.global_outbound, Limit.desk_signin_unrecognised})


RATE_LIMITED = Counter(
    "gateway_rate_limited",
    "Requests refused by a rate limit (§6.4), by limit.",
    ["limit"],
)
for _limit in Limit:
    RATE_LIMITED.labels(limit=_limit)  # every limit shows in /metrics, tripped or not

# KEYS: one per limit checked (a key may repeat: two limits over one log). ARGV: now (ms), the
# event's member, record (1) or only look (0), then a (limit, window ms) pair per key. Returns 0
# when every limit has room (and, when recording, the event is added to each log once), else the
# 1-based index of the first full limit. A log is trimmed to the longest window counted in it.
_ACQUIRE = """
local now = tonumber(ARGV[1])
local longest = {}
for i, key in ipairs(KEYS) do
  local window = tonumber(ARGV[3 + 2 * i])
  if not longest[key] or window > longest[key] then longest[key] = window end
end
for key, window in pairs(longest) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
end
for i, key in ipairs(KEYS) do
  local since = now - tonumber(ARGV[3 + 2 * i])
  if redis.call('ZCOUNT', key, '(' .. since, '+inf') >= tonumber(ARGV[2 + 2 * i]) then
    return i
  end
end
if ARGV[3] == '1' then
  for key, window in pairs(longest) do
    redis.call('ZADD', key, now, ARGV[2])
    redis.call('PEXPIRE', key, window)
  end
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Rule:
    """At most `limit` events in any `window_seconds`."""

    limit: int
    window_seconds: int


def rules(settings: Settings) -> Mapping[Limit, Rule]:
    """Every limit with its threshold and window, from the settings."""
    return {
        Limit.caller_starts: Rule(settings.rate_limit_caller_starts_per_hour, HOUR_SECONDS),
        Limit.account_sends_hour: Rule(settings.rate_limit_account_sends_per_hour, HOUR_SECONDS),
        Limit.account_sends_day: Rule(settings.rate_limit_account_sends_per_day, DAY_SECONDS),
        Limit.destination_sends: Rule(settings.rate_limit_destination_sends_per_hour, HOUR_SECONDS),
        Limit.global_outbound: Rule(settings.rate_limit_global_outbound_per_hour, HOUR_SECONDS),
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

    def __repr__(self) -> str:
        return f"Check({self.limit})"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer to `acquire`: the limit that tripped, or the recorded event."""

    tripped: Limit | None
    keys: tuple[str, ...] = ()
    member: str = ""

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
        self._script = redis.register_script(_ACQUIRE)

    def key(self, check: Check) -> str:
        """The Redis key of a check: its log's name and the subject's keyed reference."""
        if check.limit in GATEWAY_WIDE:
            return KEY_PREFIX + LOG_NAMES[check.limit]
        return f"{KEY_PREFIX}{LOG_NAMES[check.limit]}:{self._keyring.reference(check.subject)}"

    async def acquire(self, *checks: Check) -> Decision:
        """Count one event against every check, all or nothing; says which limit tripped."""
        # Unique within a log: the score holds the time, so the member needs only randomness.
        member = secrets.token_hex(6)
        tripped = await self._run(checks, member, record=True)
        if tripped is not None:
            return Decision(tripped)
        return Decision(None, tuple(dict.fromkeys(self.key(check) for check in checks)), member)

    async def peek(self, *checks: Check) -> Limit | None:
        """The first of these limits that has no room left, counting nothing."""
        return await self._run(checks, "", record=False)

    async def release(self, decision: Decision) -> None:
        """Take back an event that did not happen after all (nothing was sent)."""
        if not decision.keys:
            return
        async with self._redis.pipeline(transaction=True) as pipe:
            for key in decision.keys:
                pipe.zrem(key, decision.member)
            await pipe.execute()

    async def _run(self, checks: tuple[Check, ...], member: str, *, record: bool) -> Limit | None:
        if not checks:
            return None
        args: list[str | int] = [self._now_ms(), member, 1 if record else 0]
        for check in checks:
            rule = self._rules[check.limit]
            args += [rule.limit, rule.window_seconds * 1000]
        index = int(await self._script(keys=[self.key(check) for check in checks], args=args))
        if index == 0:
            return None
        check = checks[index - 1]
        self._report(check)
        return check.limit

    def _report(self, check: Check) -> None:
        RATE_LIMITED.labels(limit=check.limit).inc()
        threshold = self._rules[check.limit].limit
        if check.limit is Limit.global_outbound:
            # The breaker stops every code SMS and call: someone must look now.
            log.error("ratelimit.global_budget_exhausted", limit=check.limit, threshold=threshold)
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
        Limit.console_sends_account,
    ):
        return mask_account(check.subject)
    if check.limit in (Limit.signin_user, Limit.signin_address, Limit.console_sends_operator):
        return "***"  # a username or an address: the keyed reference is enough
    return mask_phone(check.subject)


__all__ = [
    "LOG_NAMES",
    "RATE_LIMITED",
    "Check",
    "Decision",
    "Limit",
    "RateLimiter",
    "Rule",
    "rules",
]
