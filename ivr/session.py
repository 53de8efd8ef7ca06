"""Per-call state in Redis: one small JSON value per active call, with a TTL."""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from copy import copy
from dataclasses import dataclass, field, fields, replace
from typing import Any

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

# The hash holds the session's fields (the current step is `n`), the last step claimed (`c`)
# and a version (`g`, its generation) that every save moves on: a copy this process remembers
# is current only while the version is the one it saved or read.

# KEYS: the call's hash. ARGV: the step. Only the current step can be claimed, and only once,
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
# default are gone), the claim mark kept, the version moved on; one round trip. Returns the
# new version, or 0 when a create found the call already there.
_SAVE = """
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local claimed = redis.call('HGET', KEYS[1], 'c')
local version = (tonumber(redis.call('HGET', KEYS[1], 'g')) or 0) + 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'g', version, unpack(ARGV, 3))
if claimed then redis.call('HSET', KEYS[1], 'c', claimed) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return version
"""

# KEYS: the call's hash. ARGV: the step, the version the new session was decided from, the
# TTL, how many fields changed, those field, value pairs, then the fields gone (back at their
# default). While the call is still at that version (so its fields are the ones the change
# was taken against) and that step is unclaimed, the change is applied, the step claimed:
# {2}. Otherwise exactly what _CLAIM answers, so the caller goes on as if it had claimed.
_ADVANCE = """
local at = redis.call('HMGET', KEYS[1], 'n', 'c', 'g')
if at[1] == ARGV[1] and at[2] ~= ARGV[1] and at[3] == ARGV[2] then
  local last = 4 + 2 * tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'c', ARGV[1], 'g', tonumber(ARGV[2]) + 1, unpack(ARGV, 5, last))
  if #ARGV > last then redis.call('HDEL', KEYS[1], unpack(ARGV, last + 1)) end
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  return {2}
end
if not at[1] then return {0} end
local claimed = 0
if at[1] == ARGV[1] and at[2] ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'c', ARGV[1])
  claimed = 1
end
return {claimed, redis.call('HGETALL', KEYS[1])}
"""

# The calls whose last session this process keeps (DESIGN §9: a thousand calls at once).
REMEMBERED_CALLS = 4096


def _pairs(stored: list[str | bytes]) -> dict[str, str]:
    """HGETALL's flat reply as a dict of text."""
    return {_text(stored[i]): _text(stored[i + 1]) for i in range(0, len(stored), 2)}


@dataclass(frozen=True, slots=True)
class Remembered:
    """A call's session as this process last stored or read it: the hash's version, the
    session, and its fields as the hash holds them."""

    version: str
    session: CallSession
    fields: dict[str, str]


class CallStore:
    """Loads and saves call sessions; claims each step once so a retried webhook acts once.

    One Redis hash per call holds the session and the last claimed step. A step that only
    moves the call through the menu costs one script call (`advance`, from the copy this
    process remembers); any other step one to claim and load, and one to save.
    """

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds
        self._claim = script(redis, _CLAIM)
        self._save = script(redis, _SAVE)
        self._advance = script(redis, _ADVANCE)
        # The session this process last stored or claimed, by CallSid, with its version.
        self._memory: OrderedDict[str, Remembered] = OrderedDict()

    @staticmethod
    def _key(call_sid: str) -> str:
        return f"call:{call_sid}"

    def _remember(
        self, session: CallSession, version: str | int | None, stored: dict[str, str]
    ) -> None:
        # A sealed secret stays in Redis only, gone with the call (`end`).
        if not version or session.sealed:
            self._memory.pop(session.call_sid, None)
            return
        self._memory[session.call_sid] = Remembered(str(version), _copy(session), stored)
        self._memory.move_to_end(session.call_sid)
        if len(self._memory) > REMEMBERED_CALLS:
            self._memory.popitem(last=False)

    def recall(self, call_sid: str, step: int) -> Remembered | None:
        """The session this process last stored for the call (a copy to change), if it is at
        `step`; Redis may have moved on since (`advance` checks)."""
        remembered = self._memory.get(call_sid)
        if remembered is None or remembered.session.step != step:
            return None
        return replace(remembered, session=_copy(remembered.session))

    async def load(self, call_sid: str) -> CallSession | None:
        """The session of a call, if it has one."""
        stored = await self._redis.hgetall(self._key(call_sid))
        if not stored:
            return None
        return CallSession.from_fields(
            call_sid, {_text(key): _text(value) for key, value in stored.items()}
        )

    def _claimed(self, call_sid: str, answer: list[Any]) -> tuple[bool, CallSession | None]:
        if len(answer) < 2:
            self._memory.pop(call_sid, None)
            return False, None
        stored = _pairs(answer[1])
        session = CallSession.from_fields(call_sid, stored)
        version = stored.pop("g", None)
        stored.pop("c", None)
        self._remember(session, version, stored)
        return bool(answer[0]), session

    async def claim_step(self, call_sid: str, step: int) -> tuple[bool, CallSession | None]:
        """Claim the right to act on `step` and load the session, in one round trip."""
        return self._claimed(call_sid, await self._claim(keys=[self._key(call_sid)], args=[step]))

    async def advance(
        self, step: int, before: Remembered, session: CallSession
    ) -> tuple[bool, CallSession | None] | None:
        """Store `session`, decided at `step` from what `recall` gave, while nobody has written
        the call since; `step` is claimed with it. Only the fields that changed are sent. None
        when stored; else the call as it is now, as `claim_step` answers (the step claimed
        here if still open), in the same round trip."""
        after = _stored(session)
        changed = [
            (name, value) for name, value in after.items() if before.fields.get(name) != value
        ]
        args: list[str | int] = [step, before.version, self._ttl, len(changed)]
        for name, value in changed:
            args += [name, value]
        args += [name for name in before.fields if name not in after]
        answer = await self._advance(keys=[self._key(session.call_sid)], args=args)
        if answer[0] == 2:
            self._remember(session, int(before.version) + 1, after)
            return None
        return self._claimed(session.call_sid, answer)

    async def _write(self, session: CallSession, *, create: bool) -> bool:
        fields = _stored(session)
        args: list[str | int] = [self._ttl, 1 if create else 0]
        for name, value in fields.items():
            args += [name, value]
        version = await self._save(keys=[self._key(session.call_sid)], args=args)
        if version:
            self._remember(session, version, fields)
        return bool(version)

    async def create(self, session: CallSession) -> bool:
        """Store a new call's session; False when the call already has one (a retried webhook)."""
        return await self._write(session, create=True)

    async def save(self, session: CallSession) -> None:
        """Store the session, refreshing its TTL."""
        await self._write(session, create=False)

    async def end(self, call_sid: str) -> None:
        """Forget a finished call (and any sealed secret with it)."""
        self._memory.pop(call_sid, None)
        await self._redis.delete(self._key(call_sid))


def _stored(session: CallSession) -> dict[str, str]:
    """The session's hash fields as Redis keeps them: text."""
    return {name: str(value) for name, value in session.to_fields().items()}


def _copy(session: CallSession) -> CallSession:
    """A copy the flow may change without touching the original (its one list included)."""
    copied = copy(session)
    copied.notices = list(session.notices)
    return copied
