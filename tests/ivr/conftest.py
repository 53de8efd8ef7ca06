"""Helpers for the voice tests: the stored escalations, and the clock the gateway reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from core.models import Escalation
from core.platform.db import create_engine, create_sessionmaker
from core.platform.settings import Settings
from tests.conftest import Gateway

MOSCOW = ZoneInfo("Europe/Moscow")
# Tuesday 24 November 2026: a working day; at noon the desk is open, at 22:00 it is closed.
OPEN_NOW = datetime(2026, 11, 24, 12, 0, tzinfo=MOSCOW)
CLOSED_NOW = datetime(2026, 11, 24, 22, 0, tzinfo=MOSCOW)
WORKING_HOURS = "mon-fri 08:00-20:00; sat 10:00-16:00"


@dataclass(frozen=True)
class Case:
    """An escalation row, read back as plain values."""

    id: int
    kind: str
    status: str
    channel: str
    session_ref: str
    phone: str
    account_masked: str | None
    account_ref: str | None
    purpose: str | None
    verification: str
    attempts: int
    reason: str
    route: str | None
    outcome: str | None
    context: dict[str, object]
    taken: bool
    closed: bool


async def stored_cases(settings: Settings) -> list[Case]:
    """Every escalation in the database, oldest first."""
    engine = create_engine(settings.database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            rows = (await session.scalars(select(Escalation).order_by(Escalation.id))).all()
            return [
                Case(
                    id=row.id,
                    kind=row.kind.value,
                    status=row.status.value,
                    channel=row.channel,
                    session_ref=row.session_ref,
                    phone=row.phone,
                    account_masked=row.account_masked,
                    account_ref=row.account_ref,
                    purpose=row.purpose,
                    verification=row.verification,
                    attempts=row.attempts,
                    reason=row.reason,
                    route=row.route.value if row.route else None,
                    outcome=row.outcome,
                    context=json.loads(row.context),
                    taken=row.taken_at is not None,
                    closed=row.closed_at is not None,
                )
                for row in rows
            ]
    finally:
        await engine.dispose()


def set_clock(gateway: Gateway, now: datetime) -> None:
    """Make the gateway's webhooks see `now` (the container's clock, which they all read)."""
    gateway.app.state.services.clock = lambda: now
