"""Console sign-in sessions, kept server-side in Redis.

Why Redis and not a signed cookie: sign-out and `operators disable` must end a session at once,
which a self-contained signed cookie cannot do without a server-side deny list anyway; the gateway
already depends on Redis and shares it between processes; and the cookie then carries nothing but
an opaque random id. Redis holds the id only as a keyed hash, so a copy of Redis gives no cookie.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from core.models import OperatorRole
from core.operators.repository import OperatorInfo
from core.platform.crypto import Keyring


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """One signed-in operator: who, their role, and the session's CSRF token."""

    username: str
    display_name: str
    role: str
    csrf_token: str

    @property
    def is_supervisor(self) -> bool:
        """Whether the supervisor view is open to this session."""
        return self.role == OperatorRole.supervisor

    @property
    def label(self) -> str:
        """The operator's name to show."""
        return self.display_name or self.username

    def __repr__(self) -> str:
        return f"ConsoleSession({self.username!r}, {self.role})"


class ConsoleSessions:
    """Creates, reads and ends console sessions; each lives `lifetime_seconds` from sign-in."""

    def __init__(self, redis: Redis, keyring: Keyring, lifetime_seconds: int) -> None:
        self._redis = redis
        self._keyring = keyring
        self.lifetime_seconds = lifetime_seconds

    def _key(self, session_id: str) -> str:
        return "console:session:" + self._keyring.keyed_hash("console-session", session_id)

    async def create(self, operator: OperatorInfo) -> tuple[str, ConsoleSession]:
        """A new session for the operator: its opaque id (for the cookie) and its data."""
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(
            username=operator.username,
            display_name=operator.display_name,
            role=str(operator.role),
            csrf_token=secrets.token_urlsafe(32),
        )
        await self._redis.set(
            self._key(session_id), json.dumps(asdict(session)), ex=self.lifetime_seconds
        )
        return session_id, session

    async def load(self, session_id: str | None) -> ConsoleSession | None:
        """The session with this id, unless it expired or was ended."""
        if not session_id or len(session_id) > 128:
            return None
        raw = await self._redis.get(self._key(session_id))
        if raw is None:
            return None
        data = json.loads(raw)
        return ConsoleSession(
            username=str(data["username"]),
            display_name=str(data.get("display_name", "")),
            role=str(data["role"]),
            csrf_token=str(data["csrf_token"]),
        )

    async def end(self, session_id: str | None) -> None:
        """Sign out: the session is gone, whoever holds the cookie."""
        if session_id and len(session_id) <= 128:
            await self._redis.delete(self._key(session_id))
