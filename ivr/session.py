"""Per-call state in Redis: one small JSON value per active call, with a TTL."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, fields

from redis.asyncio import Redis

from core.kit.phones import mask_account
from core.models import EscalationReason, Verification
from core.platform.redis import script
from ivr.menu import State
from voice_prompts import DEFAULT_LANGUAGE, Language


@dataclass
class CallSession:
    """Where a call is in the menu; `step` numbers the inputs so replays are recognised."""

    call_sid: str
    caller: str = ""
    state: State = State.main_menu
    step: int = 0
    language: Language = DEFAULT_LANGUAGE
    purpose: str | None = None
    account: str | None = None
    attempt_id: str | None = None
    tries: int = 0
    notices: list[str] = field(default_factory=list)
    verification: Verification = Verification.none
    reason: EscalationReason | None = None
    # A code or credential to say again on `*`, sealed with the server key; gone with the call.
    sealed: str | None = None
    # Whether the secret also went by SMS (the read-out says so).
    secret_by_sms: bool = False
    outbound: bool = False
    # For the operator's context: failed inputs and wrong codes so far, and the stored case.
    failures: int = 0
    wrong_codes: int = 0
    escalation_id: int | None = None
    # When a limit or the failure cap held the caller back: seconds until self-service reopens.
    wait_seconds: int = 0
    # Seconds until a new code may be sent (the resend cool-down), for the notice that says so.
    cooldown: int = 0

    def __repr__(self) -> str:
        return (
            f"CallSession({self.call_sid}, {self.state}, step={self.step}, "
            f"account={mask_account(self.account)})"
        )

    def to_fields(self) -> dict[str, str | int]:
        """The session as short hash fields, defaults left out, the CallSid is the key's.

        One small field each (not one JSON value): a hash whose values all stay under
        64 bytes is kept by Redis as a compact listpack, about half the bytes of a hash table.
        """
        data: dict[str, str | int] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name == "call_sid" or value in (None, [], "", 0, False):
                continue
            if isinstance(value, list):
                value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
            data[_SHORT[item.name]] = int(value) if isinstance(value, bool) else value
        # The step is always there: the claim script compares it.
        data[_SHORT["step"]] = self.step
        return data

    @classmethod
    def from_fields(cls, call_sid: str, stored: dict[str, str]) -> CallSession:
        """Parse the stored hash fields (unknown ones, such as the claim mark, are skipped)."""
        data: dict[str, object] = {}
        for short, raw in stored.items():
            name = _LONG.get(short)
            if name is not None:
                data[name] = _PARSE[name](raw)
        return cls(call_sid=call_sid, **data)  # type: ignore[arg-type]


# Every active call holds one of these (DESIGN §9: ≤ 1 KiB of Redis a call): one-letter names.
_SHORT = {
    "caller": "f",
    "state": "s",
    "step": "n",
    "language": "l",
    "purpose": "p",
    "account": "a",
    "attempt_id": "t",
    "tries": "r",
    "notices": "o",
    "verification": "v",
    "reason": "e",
    "sealed": "x",
    "secret_by_sms": "m",
    "outbound": "b",
    "failures": "u",
    "wrong_codes": "w",
    "escalation_id": "i",
    "wait_seconds": "z",
    "cooldown": "k",
}
_LONG = {short: name for name, short in _SHORT.items()}


def _text(raw: str | bytes) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _optional_int(raw: str) -> int | None:
    return int(raw)


def _flag(raw: str) -> bool:
    return raw == "1"


def _notices(raw: str) -> list[str]:
    return [str(item) for item in json.loads(raw)]


_PARSE: dict[str, Callable[[str], object]] = {
    "caller": str,
    "state": State,
    "step": int,
    "language": Language,
    "purpose": str,
    "account": str,
    "attempt_id": str,
    "tries": int,
    "notices": _notices,
    "verification": Verification,
    "reason": EscalationReason,
    "sealed": str,
    "secret_by_sms": _flag,
    "outbound": _flag,
    "failures": int,
    "wrong_codes": int,
    "escalation_id": _optional_int,
    "wait_seconds": int,
    "cooldown": int,
}

# KEYS: the call's hash. ARGV: the step. The hash holds the session's fields (the current step
# is `n`) and the last step claimed (`c`): only the current step can be claimed, and only once,
# by the first webhook that brings it; stale or invented steps change nothing.
_CLAIM = """
local session = redis.call('HGETALL', KEYS[1])
if #session == 0 then return {0} end
local claimed = 0
if redis.call('HGET', KEYS[1], 'n') == ARGV[1] and redis.call('HGET', KEYS[1], 'c') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'c', ARGV[1])
  claimed = 1
end
return {claimed, session}
"""

# KEYS: the call's hash. ARGV: the TTL, 1 to create only (a retried first webhook changes
# nothing), then field, value pairs. The whole session is replaced (fields back at their
# default are gone), the claim mark kept; one round trip.
_SAVE = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local claimed = redis.call('HGET', KEYS[1], 'c')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
if claimed then redis.call('HSET', KEYS[1], 'c', claimed) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""


def _pairs(stored: list[str | bytes]) -> dict[str, str]:
    """HGETALL's flat reply as a dict of text."""
    return {_text(stored[i]): _text(stored[i + 1]) for i in range(0, len(stored), 2)}


class CallStore:
    """Loads and saves call sessions; claims each step once so a retried webhook acts once.

    One Redis hash per call holds the session and the last claimed step, so a menu step costs
    one script call (claim and load) and one more (save).
    """

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._claim = script(redis, _CLAIM)
        self._save = script(redis, _SAVE)

    @staticmethod
    def _key(call_sid: str) -> str:
        return f"call:{call_sid}"

    async def load(self, call_sid: str) -> CallSession | None:
        """The session of a call, if it has one."""
        stored = await self._redis.hgetall(self._key(call_sid))
        if not stored:
            return None
        return CallSession.from_fields(
            call_sid, {_text(key): _text(value) for key, value in stored.items()}
        )

    async def claim_step(self, call_sid: str, step: int) -> tuple[bool, CallSession | None]:
        """Claim the right to act on `step` and load the session, in one round trip."""
        answer = await self._claim(keys=[self._key(call_sid)], args=[step])
        if len(answer) < 2:
            return False, None
        return bool(answer[0]), CallSession.from_fields(call_sid, _pairs(answer[1]))

    async def _write(self, session: CallSession, *, create: bool) -> bool:
        args: list[str | int] = [self._ttl, 1 if create else 0]
        for name, value in session.to_fields().items():
            args += [name, value]
        return bool(await self._save(keys=[self._key(session.call_sid)], args=args))

    async def create(self, session: CallSession) -> bool:
        """Store a new call's session; False when the call already has one (a retried webhook)."""
        return await self._write(session, create=True)

    async def save(self, session: CallSession) -> None:
        """Store the session, refreshing its TTL."""
        await self._write(session, create=False)

    async def end(self, call_sid: str) -> None:
        """Forget a finished call (and any sealed secret with it)."""
        await self._redis.delete(self._key(call_sid))
