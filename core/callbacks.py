"""Callback requests: a resident asked an operator to call back, with what already happened."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncSession

from core.crypto import Keyring
from core.models import CallbackRequest
from core.phones import mask_account

ContextValue = str | int | bool | None


class CallbackRequests:
    """Stores callback requests in the caller's transaction."""

    def __init__(self, session: AsyncSession, keyring: Keyring) -> None:
        self._session = session
        self._keyring = keyring

    async def create(
        self,
        *,
        channel: str,
        phone: str,
        reason: str,
        account_number: str | None = None,
        **context: ContextValue,
    ) -> CallbackRequest:
        """Record a request; `context` must hold no secrets."""
        request = CallbackRequest(
            channel=channel,
            phone=phone,
            reason=reason,
            account_ref=self._keyring.reference(account_number) if account_number else None,
            account_masked=mask_account(account_number) if account_number else None,
            context=json.dumps(context, ensure_ascii=False, sort_keys=True),
        )
        self._session.add(request)
        await self._session.flush()
        return request
