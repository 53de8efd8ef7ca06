"""Escalations: transfers to an operator and callback requests, with what already happened."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import Keyring
from core.models import Escalation, EscalationKind
from core.phones import mask_account

ContextValue = str | int | bool | None


class Escalations:
    """Stores escalations in the caller's transaction."""

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    async def open(
        self,
        *,
        kind: EscalationKind,
        channel: str,
        phone: str,
        reason: str,
        session_ref: str = "",
        account_number: str | None = None,
        purpose: str | None = None,
        verification: str = "none",
        attempts: int = 0,
        **context: ContextValue,
    ) -> Escalation:
        """Record a case; `context` must hold no secrets."""
        escalation = Escalation(
            kind=kind,
            channel=channel,
            session_ref=session_ref,
            phone=phone,
            reason=reason,
            account_ref=self._keyring.reference(account_number) if account_number else None,
            account_masked=mask_account(account_number) if account_number else None,
            purpose=purpose,
            verification=verification,
            attempts=attempts,
            context=json.dumps(context, ensure_ascii=False, sort_keys=True),
        )
        self._session.add(escalation)
        await self._session.flush()
        return escalation
