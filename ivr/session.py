"""Per-call state in Redis: one small JSON value per active call, with a TTL."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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

    def __repr__(self) -> str:
        return (
            f"CallSession({self.call_sid}, {self.state}, step={self.step}, "
            f"account={mask_account(self.account)})"
        )

    def to_json(self) -> str:
        """Compact JSON for Redis."""
        data = {k: v for k, v in asdict(self).items() if v not in (None, [], "", 0, False)}
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> CallSession:
        """Parse the stored JSON."""
        data = json.loads(raw)
        data["state"] = State(data.get("state", State.main_menu))
        data["language"] = Language(data.get("language", DEFAULT_LANGUAGE))
        data["verification"] = Verification(data.get("verification", Verification.none))
        return cls(**data)


class CallStore:
    """Loads and saves call sessions; claims each step once so a retried webhook acts once."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    @staticmethod
    def _key(call_sid: str) -> str:
        return f"call:{call_sid}"

    async def load(self, call_sid: str) -> CallSession | None:
        """The session of a call, if it has one."""
        raw = await self._redis.get(self._key(call_sid))
        return CallSession.from_json(raw) if raw else None

    async def claim_step(self, call_sid: str, step: int) -> tuple[bool, CallSession | None]:
        """Claim the right to act on `step` and load the session, in one round trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(f"claim:{call_sid}:{step}", 1, nx=True, ex=120)
            pipe.get(self._key(call_sid))
            claimed, raw = await pipe.execute()
        return bool(claimed), CallSession.from_json(raw) if raw else None

    async def create(self, session: CallSession) -> bool:
        """Store a new call's session; False when the call already has one (a retried webhook)."""
        return bool(
            await self._redis.set(
                self._key(session.call_sid), session.to_json(), nx=True, ex=self._ttl
            )
        )

    async def save(self, session: CallSession) -> None:
        """Store the session, refreshing its TTL."""
        await self._redis.set(self._key(session.call_sid), session.to_json(), ex=self._ttl)

    async def end(self, call_sid: str) -> None:
        """Forget a finished call (and any sealed secret with it)."""
        await self._redis.delete(self._key(call_sid))
