"""SMS opt-outs: the short number honours STOP itself (the provider does not do it for us)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import SmsOptOut


class OptOuts:
    """Reads and writes opt-outs in the caller's transaction.

    A number's answer is read once and kept until this object writes that number (its write
    may still roll back, so the next question reads again): a recovery asks whether the
    password SMS may go, then queues it, and the second question was a second query.
    """

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self._known: dict[str, bool] = {}

    async def is_opted_out(self, e164: str) -> bool:
        """Whether the number has texted STOP (and not START since)."""
        known = self._known.get(e164)
        if known is None:
            found = await self._session.scalar(select(SmsOptOut.e164).where(SmsOptOut.e164 == e164))
            known = self._known[e164] = found is not None
        return known

    async def opt_out(self, e164: str) -> bool:
        """Record STOP; False when the number had already opted out."""
        if await self.is_opted_out(e164):
            return False
        self._session.add(SmsOptOut(e164=e164))
        self._known.pop(e164, None)
        await self._session.flush()
        return True

    async def opt_in(self, e164: str) -> bool:
        """Record START; False when the number had not opted out."""
        self._known.pop(e164, None)
        result = await self._session.execute(delete(SmsOptOut).where(SmsOptOut.e164 == e164))
        return bool(getattr(result, "rowcount", 0))
