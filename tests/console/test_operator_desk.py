"""The desk's supervisor figures, with a fixed clock (no wall-clock assertions)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from core.accounts.directory import SqlAccountDirectory
from core.audit.log import AuditLog
from core.delivery.outbox import Delivery
from core.escalations.desk import OperatorDesk, mask_phone_last4
from core.escalations.repository import Escalations
from core.models import EscalationKind, EscalationReason, EscalationStatus
from core.platform.container import Services
from core.platform.crypto import Keyring
from core.platform.db import create_engine, transaction
from core.platform.settings import Settings
from tests.conftest import MOBILE, MOBILE_ONLY, seed_accounts
from tests.support.fakes import RecordingMessenger

# 10:00 in Moscow: "today" there began at 21:00 UTC the day before.
NOW = datetime(2026, 11, 24, 7, 0, tzinfo=UTC)


def desk(services: Services, session: AsyncSession, clock: datetime = NOW) -> OperatorDesk:
    settings = services.settings
    return OperatorDesk(
        session=session,
        settings=settings,
        keyring=services.keyring,
        directory=SqlAccountDirectory(session, settings),
        delivery=Delivery(settings, session, services.keyring, lambda: None),
        recovery=services.recovery(session),
        audit=AuditLog(session, services.keyring),
        redis=services.redis,
        clock=lambda: clock,
    )


@pytest.fixture(params=["sqlite", "postgresql"])
async def services(
    request: pytest.FixtureRequest, settings: Settings, redis: Redis
) -> AsyncIterator[Services]:
    """The process services on a migrated, seeded database of each kind."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("postgres_url")
        engine = create_engine(url)
        async with engine.begin() as connection:
            await connection.execute(text("DROP SCHEMA public CASCADE"))
            await connection.execute(text("CREATE SCHEMA public"))
        await engine.dispose()
        settings = settings.model_copy(update={"database_url": url})
    await seed_accounts(settings)
    built = Services.build(settings, messenger=RecordingMessenger())
    try:
        yield built
    finally:
        await built.close()


async def test_stats_count_by_status_kind_reason_and_time_waiting(services: Services) -> None:
    settings = services.settings
    async with transaction(services.sessionmaker) as session:
        opened = Escalations(session, Keyring(settings))
        waiting = (
            (30, EscalationReason.caller_request),
            (10, EscalationReason.no_phone),
            (2, EscalationReason.caller_request),
        )
        for minutes, reason in waiting:
            row = await opened.open(
                kind=EscalationKind.transfer, channel="voice", phone=MOBILE, reason=reason
            )
            row.created_at = NOW - timedelta(minutes=minutes)
        callback = await opened.open(
            kind=EscalationKind.callback,
            channel="sms",
            phone=MOBILE,
            reason=EscalationReason.caller_request,
            account_number=MOBILE_ONLY,
        )
        callback.created_at = NOW - timedelta(hours=3)
        yesterday = await opened.open(
            kind=EscalationKind.transfer,
            channel="voice",
            phone=MOBILE,
            reason=EscalationReason.error,
        )
        yesterday.created_at = NOW - timedelta(hours=20)

        night = await opened.open(
            kind=EscalationKind.transfer,
            channel="voice",
            phone=MOBILE,
            reason=EscalationReason.error,
        )
        night.created_at = NOW - timedelta(hours=9)

        # Resolved today in Moscow (twice: 09:00, and 01:30, which is still yesterday in
        # UTC) and yesterday: two count.
        await desk(services, session, NOW - timedelta(hours=1)).close(
            callback.id, "ivanova", status=EscalationStatus.resolved, note="готово"
        )
        await desk(services, session, NOW - timedelta(hours=11)).close(
            yesterday.id, "ivanova", status=EscalationStatus.resolved, note="вчера"
        )
        await desk(services, session, NOW - timedelta(hours=8, minutes=30)).close(
            night.id, "petrov", status=EscalationStatus.resolved, note="ночью"
        )
        stats = await desk(services, session).stats()
        queue = await desk(services, session).queue()
        closed = await desk(services, session).recently_closed()
    # Audit events are chained when their transaction commits: read them in the next one.
    async with transaction(services.sessionmaker) as session:
        history = await desk(services, session).history(callback)

    assert stats.by_status == {"waiting": 3, "resolved": 3}
    assert stats.open_by_kind == {"transfer": 3}
    assert stats.open_by_reason == {"caller_request": 2, "no_phone": 1}
    assert stats.waiting == 3
    assert stats.oldest_wait == timedelta(minutes=30)
    assert stats.median_wait == timedelta(minutes=10)
    assert stats.resolved_today == {"ivanova": 1, "petrov": 1}
    assert [case.created_at for case in queue] == sorted(case.created_at for case in queue)
    assert len(queue) == 3
    assert [event.event for event in history] == ["operator.case_resolved"]
    assert [case.operator for case in closed] == ["ivanova", "petrov", "ivanova"]


def test_phone_mask_keeps_the_last_four_digits() -> None:
    assert mask_phone_last4("+79123456789") == "+•••••••6789"
    assert mask_phone_last4("") == "—"
    assert mask_phone_last4("+123") == "•••"
