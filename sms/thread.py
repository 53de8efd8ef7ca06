"""Per-sender SMS dialog state in Redis, and the replies already given (for retried webhooks)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from voice_prompts import DEFAULT_LANGUAGE, Language

REPLY_TTL_SECONDS = 24 * 3600
PENDING = "\x00pending"


@dataclass
class SmsThread:
    """Where a sender's recovery by SMS stands."""

    sender: str
    attempt_id: str | None = None
    purpose: str | None = None
    language: Language = DEFAULT_LANGUAGE

    def __repr__(self) -> str:
        return f"SmsThread(attempt={'yes' if self.attempt_id else 'no'}, {self.language})"


class SmsThreads:
    """Loads and saves threads; remembers each MessageSid's reply so a retry gets the same one."""

    def __init__(self, redis: Redis, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl = ttl_seconds

    async def load(self, sender: str) -> SmsThread:
        """The sender's thread, or a fresh one."""
        raw = await self._redis.get(f"sms:thread:{sender}")
        if not raw:
            return SmsThread(sender=sender)
        data = json.loads(raw)
        data["language"] = Language(data.get("language", DEFAULT_LANGUAGE))
        return SmsThread(**data)

    async def save(self, thread: SmsThread) -> None:
        """Store the thread with its TTL."""
        await self._redis.set(
            f"sms:thread:{thread.sender}", json.dumps(asdict(thread)), ex=self._ttl
        )

    async def clear(self, sender: str) -> None:
        """Forget the sender's thread."""
        await self._redis.delete(f"sms:thread:{sender}")

    async def claim(self, message_sid: str) -> str | None:
        """None when this message is new (and now claimed); else the reply it already got."""
        key = f"sms:msg:{message_sid}"
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(key, PENDING, nx=True, ex=REPLY_TTL_SECONDS)
            pipe.get(key)
            claimed, stored = await pipe.execute()
        if claimed:
            return None
        # A concurrent duplicate still being answered gets no reply rather than a second one.
        return "" if stored in (None, PENDING) else str(stored)

    async def remember(self, message_sid: str, reply: str) -> None:
        """Keep the reply for retries of the same message."""
        await self._redis.set(f"sms:msg:{message_sid}", reply, ex=REPLY_TTL_SECONDS)

    async def release(self, message_sid: str) -> None:
        """Let a retry of a message that failed be handled afresh."""
        await self._redis.delete(f"sms:msg:{message_sid}")
