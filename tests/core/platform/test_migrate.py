"""Alembic migrations: up from empty and down again, on SQLite and PostgreSQL, matching the models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from redis.asyncio import Redis
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from core.platform.db import Base, create_engine
from core.platform.migrate import alembic_config, downgrade_database, upgrade_database
from core.platform.settings import Settings
from gateway.app import create_app
from tests.conftest import AUTH_TOKEN, MOBILE, MOBILE_ONLY, PUBLIC_BASE_URL, seed_accounts
from tests.support.fakes import RecordingMessenger
from tests.support.twilio_driver import Call, Twilio


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind (PostgreSQL: a new database on the session's server)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'migrate.db'}"
    new_postgres_database: Callable[[], str] = request.getfixturevalue("new_postgres_database")
    return new_postgres_database()


def _differences(connection: Connection) -> list[object]:
    return list(compare_metadata(MigrationContext.configure(connection), Base.metadata))


def _tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names()) - {"alembic_version"}


def _schema(connection: Connection) -> dict[str, object]:
    """Every table with its columns, indexes, unique and foreign keys, as the database has them."""
    inspector = inspect(connection)
    schema: dict[str, object] = {}
    for table in sorted(_tables(connection)):
        schema[table] = (
            sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ),
            sorted((i["name"], tuple(i["column_names"])) for i in inspector.get_indexes(table)),
            sorted(
                (u["name"], tuple(u["column_names"]))
                for u in inspector.get_unique_constraints(table)
            ),
            sorted(
                (tuple(f["constrained_columns"]), f["referred_table"])
                for f in inspector.get_foreign_keys(table)
            ),
        )
    return schema


def _revisions_from_base(url: str) -> list[str]:
    """The project's revisions in the order they apply (works for any head)."""
    script = ScriptDirectory.from_config(alembic_config(url))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


async def test_upgrade_matches_the_models_and_downgrade_empties(database_url: str) -> None:
    await upgrade_database(database_url)
    engine = create_engine(database_url)
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
        assert await connection.run_sync(_tables) == set(Base.metadata.tables)
    await asyncio.to_thread(downgrade_database, database_url)
    async with engine.connect() as connection:
        assert await connection.run_sync(_tables) == set()
    await engine.dispose()


async def test_each_downgrade_restores_the_schema_before_its_upgrade(database_url: str) -> None:
    """Up one revision at a time from empty, then down one at a time: every step undoes exactly
    what its upgrade did, and the schema can be brought to head again afterwards."""
    revisions = _revisions_from_base(database_url)
    assert revisions, "no migrations found"
    engine = create_engine(database_url)
    snapshots: list[dict[str, object]] = []
    for revision in ["base", *revisions]:
        if revision != "base":
            await upgrade_database(database_url, revision)
        async with engine.connect() as connection:
            snapshots.append(await connection.run_sync(_schema))
    assert snapshots[0] == {} and snapshots[-1] != {}
    for revision, before in zip(reversed(revisions), reversed(snapshots[:-1]), strict=True):
        await asyncio.to_thread(downgrade_database, database_url, "-1")
        async with engine.connect() as connection:
            assert await connection.run_sync(_schema) == before, f"downgrade of {revision}"
    await upgrade_database(database_url)
    async with engine.connect() as connection:
        assert await connection.run_sync(_differences) == []
        assert await connection.run_sync(_schema) == snapshots[-1]
    await engine.dispose()


async def test_voice_recovery_on_postgresql(
    new_postgres_database: Callable[[], str], settings: Settings, redis: Redis
) -> None:
    """Even the SQLite run of the suite sees one whole recovery on PostgreSQL."""
    settings = settings.model_copy(update={"database_url": new_postgres_database()})
    await seed_accounts(settings)
    messenger = RecordingMessenger()
    app = create_app(settings, messenger=messenger)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            call = Call(Twilio(http, PUBLIC_BASE_URL, AUTH_TOKEN), caller=MOBILE)
            await call.start()
            for keys in ("1", MOBILE_ONLY + "#", "1", "1"):
                await call.press(keys)
            await call.press(messenger.to(MOBILE)[-1].body.split("код ")[1][:6])
    assert "Готово" in call.text
    assert "временный пароль" in messenger.to(MOBILE)[-1].body


async def test_wider_caller_ids_downgrade_with_a_long_caller_id_stored(database_url: str) -> None:
    """A case whose callback number is a SIP URI (wider than the old column) survives the
    downgrade of b2e7ca11e1d2, cut to the old width, instead of blocking it on PostgreSQL."""
    await upgrade_database(database_url, "b2e7ca11e1d2")
    engine = create_engine(database_url)
    sip = "sip:alice.ivanova@pbx.eirc.example.ru"
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO escalations (created_at, kind, channel, session_ref, phone,"
                " attempts, reason, context, status, verification)"
                " VALUES (CURRENT_TIMESTAMP, 'transfer', 'voice', 'CA1', :phone, 0,"
                " 'caller_request', '{}', 'waiting', 'none')"
            ),
            {"phone": sip},
        )
    await asyncio.to_thread(downgrade_database, database_url, "b2e7ca11e1d2-1")
    async with engine.connect() as connection:
        assert await connection.scalar(text("SELECT phone FROM escalations")) == sip[:20]
    await upgrade_database(database_url)
    await engine.dispose()


async def test_escalation_route_moves_from_the_context_to_its_column_and_back(
    database_url: str,
) -> None:
    """c3f2a9d4e5b6 moves each case's route out of its JSON context; the downgrade puts it back."""
    await upgrade_database(database_url, "b2e7ca11e1d2")
    engine = create_engine(database_url)
    contexts = {
        "CA1": '{"route": "enqueue", "state": "main_menu", "transfers": 1}',
        "CA2": '{"route": "dial", "transfers": 2}',
        "CA3": '{"after_hours": true}',
    }
    async with engine.begin() as connection:
        for session_ref, context in contexts.items():
            await connection.execute(
                text(
                    "INSERT INTO escalations (created_at, kind, channel, session_ref, phone,"
                    " attempts, reason, context, status, verification)"
                    " VALUES (CURRENT_TIMESTAMP, 'transfer', 'voice', :ref, '+79123456789', 0,"
                    " 'caller_request', :context, 'waiting', 'none')"
                ),
                {"ref": session_ref, "context": context},
            )
    await upgrade_database(database_url, "c3f2a9d4e5b6")
    query = text("SELECT session_ref, route, context FROM escalations ORDER BY session_ref")
    async with engine.connect() as connection:
        rows = [tuple(row) for row in (await connection.execute(query)).all()]
    assert rows == [
        ("CA1", "enqueue", '{"state": "main_menu", "transfers": 1}'),
        ("CA2", "dial", '{"transfers": 2}'),
        ("CA3", None, '{"after_hours": true}'),
    ]
    await asyncio.to_thread(downgrade_database, database_url, "c3f2a9d4e5b6-1")
    query = text("SELECT session_ref, context FROM escalations ORDER BY session_ref")
    async with engine.connect() as connection:
        back = {
            ref: json.loads(context) for ref, context in (await connection.execute(query)).all()
        }
    assert back == {ref: json.loads(context) for ref, context in contexts.items()}
    await upgrade_database(database_url)
    await engine.dispose()
