"""Per-call state in Redis: one small JSON value per active call, with a TTL."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from enum import StrEnum

from redis.asyncio import Redis

from core.phones import mask_account
from ivr.menu import State
from voice_prompts import DEFAULT_LANGUAGE, Language


class Verification(StrEnum):
    none = "none"
    code_sent = "code_sent"
    verified = "verified"


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
    reason: str | None = None
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

    def to_json(self) -> str:
        """Compact JSON for Redis: short names, defaults left out, the CallSid is the key's."""
        data = {
            _SHORT[item.name]: value
            for item in fields(self)
            if item.name != "call_sid"
            and (value := getattr(self, item.name)) not in (None, [], "", 0, False)
        }
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, call_sid: str, raw: str | bytes) -> CallSession:
        """Parse the stored JSON."""
        data = {_LONG[short]: value for short, value in json.loads(raw).items()}
        data["state"] = State(data.get("state", State.main_menu))
        data["language"] = Language(data.get("language", DEFAULT_LANGUAGE))
        data["verification"] = Verification(data.get("verification", Verification.none))
        return cls(call_sid=call_sid, **data)


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

# KEYS: the call's hash. ARGV: the step. The hash holds the session (`s`), its current step
# (`n`) and the last step claimed (`c`): only the current step can be claimed, and only once, by
# the first webhook that brings it; stale or invented steps change nothing.
_CLAIM = """
local session = redis.call('HGET', KEYS[1], 's')
if not session then return {0} end
local current = redis.call('HGET', KEYS[1], 'n')
if current == ARGV[1] and redis.call('HGET', KEYS[1], 'c') ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'c', ARGV[1])
  return {1, session}
end
return {0, session}
"""


class CallStore:
    """Loads and saves call sessions; claims each step once so a retried webhook acts once.

    One Redis hash per call holds the session and the last claimed step, so a menu step costs
    one script call (claim and load) and one write (save).
    """

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._claim = redis.register_script(_CLAIM)

    @staticmethod
    def _key(call_sid: str) -> str:
        return f"call:{call_sid}"

    async def load(self, call_sid: str) -> CallSession | None:
        """The session of a call, if it has one."""
        raw = await self._redis.hget(self._key(call_sid), "s")
        return CallSession.from_json(call_sid, raw) if raw else None

    async def claim_step(self, call_sid: str, step: int) -> tuple[bool, CallSession | None]:
        """Claim the right to act on `step` and load the session, in one round trip."""
        answer = await self._claim(keys=[self._key(call_sid)], args=[step])
        if len(answer) < 2:
            return False, None
        return bool(answer[0]), CallSession.from_json(call_sid, answer[1])

    async def create(self, session: CallSession) -> bool:
        """Store a new call's session; False when the call already has one (a retried webhook)."""
        key = self._key(session.call_sid)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "s", session.to_json())
            pipe.hsetnx(key, "n", session.step)
            pipe.expire(key, self._ttl)
            created, _, _ = await pipe.execute()
        return bool(created)

    async def save(self, session: CallSession) -> None:
        """Store the session, refreshing its TTL."""
        key = self._key(session.call_sid)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"s": session.to_json(), "n": session.step})
            pipe.expire(key, self._ttl)
            await pipe.execute()

    async def end(self, call_sid: str) -> None:
        """Forget a finished call (and any sealed secret with it)."""
        await self._redis.delete(self._key(call_sid))
