"""The audit hash chain: tampering with rows is found, concurrent appends do not fork it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from core.audit.log import (
    GENESIS_HASH,
    AuditLog,
    ChainBreak,
    ChainReport,
    canonical_form,
    case_history,
    seal,
    seal_row,
    verify_chain,
)
from core.models import AuditEvent
from core.platform.crypto import Keyring
from core.platform.db import create_engine, create_sessionmaker, transaction
from core.platform.migrate import upgrade_database
from core.platform.settings import Settings
from gateway.cli.audit import audit_app
from tests.conftest import MOBILE, MOBILE_ONLY, TWO_MOBILES_EMAIL, Gateway

SECRET_KEY = "audit-test-secret-key-0123456789abcdef"

# Mounted the way gateway/cli/main.py mounts it.
cli = typer.Typer()
cli.add_typer(audit_app, name="audit")


@dataclass
class Chain:
    """A migrated database and the keyring the gateway would seal its audit rows with."""

    url: str
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    keyring: Keyring

    async def record(self, count: int, account: str = MOBILE_ONLY) -> list[int]:
        """Record `count` events, each in a transaction of its own; their row ids."""
        for number in range(count):
            async with transaction(self.sessionmaker) as session:
                await AuditLog(session, self.keyring).record(
                    "code.checked",
                    channel="voice",
                    session_ref=f"CA{number:032d}",
                    account_number=account,
                    outcome="wrong",
                    attempt=number,
                )
        return await self.ids()

    async def ids(self) -> list[int]:
        async with self.sessionmaker() as session:
            return list(await session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)))

    async def execute(self, sql: str, **params: object) -> None:
        """Raw SQL, as someone with database access but without the key would run it."""
        async with self.engine.begin() as connection:
            await connection.execute(text(sql), params)

    async def verify(self, keyring: Keyring | None = None) -> ChainReport:
        async with transaction(self.sessionmaker) as session:
            return await verify_chain(session, keyring or self.keyring)


def settings_for(url: str) -> Settings:
    return Settings(_env_file=None, database_url=url, secret_key=SECRET_KEY)


async def empty_postgres(url: str) -> str:
    engine = create_engine(url)
    async with engine.begin() as connection:
        await connection.execute(text("DROP SCHEMA public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()
    return url


async def open_chain(url: str) -> Chain:
    await upgrade_database(url)
    engine = create_engine(url)
    return Chain(url, engine, create_sessionmaker(engine), Keyring(settings_for(url)))


@pytest.fixture
async def chain(settings: Settings) -> AsyncIterator[Chain]:
    """An audit trail on a migrated SQLite database."""
    opened = await open_chain(settings.database_url)
    yield opened
    await opened.engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
async def any_chain(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[Chain]:
    """An audit trail on each kind of database."""
    url = settings.database_url
    if request.param == "postgresql":
        url = await empty_postgres(request.getfixturevalue("postgres_url"))
    opened = await open_chain(url)
    yield opened
    await opened.engine.dispose()


# --- the chain ---------------------------------------------------------------------------------


async def test_recorded_events_form_a_verified_chain(any_chain: Chain) -> None:
    ids = await any_chain.record(5)
    async with any_chain.sessionmaker() as session:
        rows = list(await session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    assert [row.id for row in rows] == ids
    assert [row.seq for row in rows] == [1, 2, 3, 4, 5]
    assert [row.prev_hash for row in rows] == [GENESIS_HASH] + [row.hash for row in rows[:-1]]
    assert len({row.hash for row in rows}) == 5

    report = await any_chain.verify()
    assert report.intact and report.broken is None
    assert (report.events, report.unsealed, report.head) == (5, 0, rows[-1].hash)


async def test_the_hash_is_keyed_over_the_canonical_form(chain: Chain) -> None:
    [event_id] = await chain.record(1)
    async with chain.sessionmaker() as session:
        row = await session.get_one(AuditEvent, event_id)
    canonical = canonical_form(
        1,
        row.created_at,
        "code.checked",
        "voice",
        "CA" + "0" * 32,
        chain.keyring.reference(MOBILE_ONLY),
        "*******001",
        '{"attempt": 0, "outcome": "wrong"}',
        GENESIS_HASH,
    )
    assert row.hash == seal(chain.keyring, canonical)
    assert row.hash != seal(Keyring(Settings(_env_file=None, secret_key="another-key")), canonical)
    assert MOBILE_ONLY not in canonical


async def test_an_edited_row_is_named(any_chain: Chain) -> None:
    ids = await any_chain.record(5)
    await any_chain.execute(
        "UPDATE audit_events SET detail = :detail WHERE id = :id",
        detail='{"attempt": 2, "outcome": "accepted"}',
        id=ids[2],
    )
    report = await any_chain.verify()
    assert not report.intact and report.broken is not None
    assert report.broken.event_id == ids[2]
    assert "do not match its hash" in report.broken.problem
    assert report.events == 2


async def test_a_deleted_row_is_found_at_the_next_link(chain: Chain) -> None:
    ids = await chain.record(5)
    await chain.execute("DELETE FROM audit_events WHERE id = :id", id=ids[2])
    report = await chain.verify()
    assert report.broken is not None
    assert report.broken.event_id == ids[3]
    assert "1 event missing before it" in report.broken.problem


async def test_a_deletion_covered_up_by_relinking_is_found(chain: Chain) -> None:
    ids = await chain.record(5)
    async with chain.sessionmaker() as session:
        deleted = await session.get_one(AuditEvent, ids[1])
    # Without the key, the next row can be pointed at the deleted row's predecessor and
    # renumbered, but not re-sealed.
    await chain.execute("DELETE FROM audit_events WHERE id = :id", id=ids[1])
    await chain.execute(
        "UPDATE audit_events SET seq = :seq, prev_hash = :prev WHERE id = :id",
        seq=deleted.seq,
        prev=deleted.prev_hash,
        id=ids[2],
    )
    report = await chain.verify()
    assert report.broken is not None and report.broken.event_id == ids[2]
    assert "do not match its hash" in report.broken.problem


async def test_a_deleted_first_row_is_found(chain: Chain) -> None:
    ids = await chain.record(3)
    await chain.execute("DELETE FROM audit_events WHERE id = :id", id=ids[0])
    report = await chain.verify()
    assert report.broken is not None and report.broken.event_id == ids[1]


async def test_a_row_resealed_with_a_wrong_key_is_named(chain: Chain) -> None:
    ids = await chain.record(5)
    forger = Keyring(Settings(_env_file=None, secret_key="a-guessed-secret-key"))
    async with transaction(chain.sessionmaker) as session:
        row = await session.get_one(AuditEvent, ids[1])
        assert row.seq is not None and row.prev_hash is not None
        row.detail = '{"attempt": 1, "outcome": "accepted"}'
        row.hash = seal_row(forger, row, row.seq, row.prev_hash)
    report = await chain.verify()
    assert report.broken is not None and report.broken.event_id == ids[1]
    # Read with the forger's key, the untouched rows are the ones that fail.
    assert (await chain.verify(forger)).broken == ChainBreak(ids[0], report.broken.problem)


async def test_resealing_one_row_with_the_key_still_breaks_the_next_link(chain: Chain) -> None:
    ids = await chain.record(4)
    async with transaction(chain.sessionmaker) as session:
        row = await session.get_one(AuditEvent, ids[1])
        assert row.seq is not None and row.prev_hash is not None
        row.detail = '{"attempt": 1, "outcome": "accepted"}'
        row.hash = seal_row(chain.keyring, row, row.seq, row.prev_hash)
    report = await chain.verify()
    assert report.broken is not None and report.broken.event_id == ids[2]
    assert "does not link to the event before it" in report.broken.problem


async def test_rows_from_before_the_chain_are_counted_apart(chain: Chain) -> None:
    for event in ("recovery.started", "code.sent_sms"):
        await chain.execute(
            "INSERT INTO audit_events (created_at, event, channel, session_ref, detail) "
            "VALUES ('2026-01-01 10:00:00.000000', :event, 'voice', '', '{}')",
            event=event,
        )
    ids = await chain.record(3)
    report = await chain.verify()
    assert report.intact and (report.events, report.unsealed) == (3, 2)

    # Clearing a sealed row's chain fields does not make it "old".
    await chain.execute(
        "UPDATE audit_events SET seq = NULL, prev_hash = NULL, hash = NULL WHERE id = :id",
        id=ids[3],
    )
    report = await chain.verify()
    assert report.broken is not None and report.broken.event_id == ids[3]


async def test_concurrent_appends_do_not_fork_the_chain(any_chain: Chain) -> None:
    async def append(number: int) -> None:
        async with transaction(any_chain.sessionmaker) as session:
            await AuditLog(session, any_chain.keyring).record(
                "recovery.started",
                channel="sms",
                session_ref=f"SM{number:032d}",
                account_number=MOBILE_ONLY,
            )
            # Stay in the transaction a moment, so that the others read while it is open.
            await asyncio.sleep(0.01)

    await asyncio.gather(*(append(number) for number in range(20)))
    report = await any_chain.verify()
    assert report.intact, report.broken
    assert report.events == 20
    async with any_chain.sessionmaker() as session:
        seqs = list(await session.scalars(select(AuditEvent.seq).order_by(AuditEvent.id)))
    assert seqs == list(range(1, 21))


async def test_case_history_lists_one_account_in_order(chain: Chain) -> None:
    await chain.record(2, account=MOBILE_ONLY)
    await chain.record(1, account=TWO_MOBILES_EMAIL)
    await chain.record(1, account=MOBILE_ONLY)
    async with chain.sessionmaker() as session:
        events = await case_history(session, chain.keyring, MOBILE_ONLY)
    assert [event.session_ref[-1] for event in events] == ["0", "1", "0"]
    assert {event.account_masked for event in events} == {"*******001"}
    assert [event.id for event in events] == sorted(event.id for event in events)


# --- the command line --------------------------------------------------------------------------


def run_cli(url: str, *args: str, secret_key: str = SECRET_KEY) -> Result:
    return CliRunner().invoke(
        cli,
        ["audit", *args],
        env={
            "GATEWAY_DATABASE_URL": url,
            "GATEWAY_SECRET_KEY": secret_key,
            "COLUMNS": "200",
        },
    )


@pytest.fixture
def no_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No stray .env from the working directory.
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("no_dotenv")
async def test_cli_verify_reports_an_intact_chain(chain: Chain) -> None:
    await chain.record(3)
    result = await asyncio.to_thread(run_cli, chain.url, "verify")
    assert result.exit_code == 0, result.output
    assert "audit chain intact: 3 events" in result.output


@pytest.mark.usefixtures("no_dotenv")
async def test_cli_verify_names_the_broken_row(chain: Chain) -> None:
    ids = await chain.record(4)
    await chain.execute("UPDATE audit_events SET event = 'code.spoken' WHERE id = :id", id=ids[1])
    result = await asyncio.to_thread(run_cli, chain.url, "verify")
    assert result.exit_code == 1
    assert f"broken at event id {ids[1]}:" in result.output
    assert "do not match its hash" in result.output


@pytest.mark.usefixtures("no_dotenv")
async def test_cli_verify_with_another_key_fails(chain: Chain) -> None:
    ids = await chain.record(2)
    result = await asyncio.to_thread(
        run_cli, chain.url, "verify", secret_key="some-other-secret-key-0123456789"
    )
    assert result.exit_code == 1
    assert f"broken at event id {ids[0]}:" in result.output


@pytest.mark.usefixtures("no_dotenv")
async def test_cli_show_masks_every_number(chain: Chain) -> None:
    await chain.record(2, account=MOBILE_ONLY)
    await chain.record(1, account=TWO_MOBILES_EMAIL)
    async with transaction(chain.sessionmaker) as session:
        # A detail that breaks the rule and carries a phone: the table must still mask it.
        await AuditLog(session, chain.keyring).record(
            "recovery.completed",
            channel="voice",
            session_ref="CA" + "f" * 32,
            account_number=MOBILE_ONLY,
            caller=MOBILE,
            sent_by_sms=True,
        )
    result = await asyncio.to_thread(run_cli, chain.url, "show", "--account", MOBILE_ONLY)
    assert result.exit_code == 0, result.output
    output = result.output
    assert "Audit trail of account *******001" in output
    assert output.count("code.checked") == 2 and "recovery.completed" in output
    assert "outcome=wrong" in output and "sent_by_sms=true" in output
    assert "*******001" in output
    for secret in (MOBILE_ONLY, MOBILE, MOBILE.lstrip("+"), MOBILE[2:], TWO_MOBILES_EMAIL):
        assert secret not in output
    assert "*******003" not in output  # another account's events


@pytest.mark.usefixtures("no_dotenv")
async def test_cli_show_an_account_without_events(chain: Chain) -> None:
    await chain.record(1, account=MOBILE_ONLY)
    result = await asyncio.to_thread(run_cli, chain.url, "show", "--account", TWO_MOBILES_EMAIL)
    assert result.exit_code == 0
    assert "no audit events for account *******003" in result.output
    assert TWO_MOBILES_EMAIL not in result.output


# --- end to end --------------------------------------------------------------------------------


async def test_a_voice_recovery_leaves_a_verified_case_history(gateway: Gateway) -> None:
    call = gateway.call()
    await call.start()
    for keys in ("1", MOBILE_ONLY + "#", "1", "1"):
        await call.press(keys)
    await call.press(gateway.messenger.to(MOBILE)[-1].body.split("код ")[1][:6])
    assert "Готово" in call.text

    engine = create_engine(gateway.settings.database_url)
    keyring = Keyring(gateway.settings)
    try:
        async with transaction(create_sessionmaker(engine)) as session:
            report = await verify_chain(session, keyring)
            events = await case_history(session, keyring, MOBILE_ONLY)
    finally:
        await engine.dispose()
    assert report.intact, report.broken
    names = [event.event for event in events]
    assert names[0] == "recovery.started" and names[-1] == "recovery.completed"
    assert names.index("code.sent_sms") < names.index("code.checked") < len(names) - 1
    assert report.events >= len(names)
    assert [event.seq for event in events] == sorted(event.seq or 0 for event in events)


async def test_events_are_chained_at_commit_and_vanish_with_a_rollback(any_chain: Chain) -> None:
    async with transaction(any_chain.sessionmaker) as session:
        log = AuditLog(session, any_chain.keyring)
        for number in range(3):
            await log.record("code.sent", channel="voice", session_ref=f"CA{number:032d}")
        # Nothing is written (nor locked) before the transaction commits.
        assert (await session.scalar(select(func.count(AuditEvent.id)))) == 0
    with pytest.raises(RuntimeError):
        async with transaction(any_chain.sessionmaker) as session:
            await AuditLog(session, any_chain.keyring).record(
                "recovery.completed", channel="voice", session_ref="CA" + "e" * 32
            )
            raise RuntimeError("the request failed")
    async with transaction(any_chain.sessionmaker) as session:
        await AuditLog(session, any_chain.keyring).record(
            "code.sent", channel="sms", session_ref="SM" + "1" * 32
        )
    report = await any_chain.verify()
    assert report.intact, report.broken
    async with any_chain.sessionmaker() as session:
        rows = (await session.execute(select(AuditEvent.seq, AuditEvent.event))).all()
    assert sorted(rows) == [(1, "code.sent"), (2, "code.sent"), (3, "code.sent"), (4, "code.sent")]
