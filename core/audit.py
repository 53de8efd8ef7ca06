"""Audit trail: every recovery step as a row, with pseudonyms and masks instead of raw values."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import Keyring
from core.metrics import RECOVERY_EVENTS
from core.models import AuditEvent
from core.phones import mask_account

DetailValue = str | int | bool | None


class AuditLog:
    """Writes audit events into the caller's transaction."""

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    async def record(
        self,
        event: str,
        *,
        channel: str,
        session_ref: str,
        account_number: str | None = None,
        **detail: DetailValue,
    ) -> None:
        """Add one event; `detail` must hold no secrets (codes, passwords, full numbers)."""
        self._session.add(
            AuditEvent(
                event=event,
                channel=channel,
                session_ref=session_ref[:64],
                account_ref=self._keyring.reference(account_number) if account_number else None,
                account_masked=mask_account(account_number) if account_number else None,
                detail=json.dumps(detail, ensure_ascii=False, sort_keys=True),
            )
        )
        await self._session.flush()
        RECOVERY_EVENTS.labels(event=event, channel=channel).inc()
