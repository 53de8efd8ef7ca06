"""The CLI's one way into the database (gateway/cli/session.py): migrate, one transaction, dispose."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.models import SmsOptOut
from core.platform.settings import Settings
from gateway.cli.session import cli_session


async def _opted_out(settings: Settings) -> int:
    async with cli_session(settings) as session:
        return int(await session.scalar(select(func.count()).select_from(SmsOptOut)) or 0)


async def test_cli_session_migrates_commits_and_rolls_back(settings: Settings) -> None:
    # The first command on a fresh database finds its tables: the session migrated it.
    assert await _opted_out(settings) == 0
    async with cli_session(settings) as session:
        session.add(SmsOptOut(e164="+79123456789"))
    assert await _opted_out(settings) == 1
    with pytest.raises(RuntimeError):
        async with cli_session(settings) as session:
            session.add(SmsOptOut(e164="+79123456780"))
            await session.flush()
            raise RuntimeError("the command failed")
    assert await _opted_out(settings) == 1
