"""Connection URLs as operators write them (§7): given the async driver, or refused with advice."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from core.platform.db import create_engine
from core.platform.migrate import alembic_config
from core.platform.settings import Settings, UnsafeSettingsError, normalize_database_url
from core.platform.sqlite_driver import OneHopSQLiteDialect
from gateway.cli.main import app


@pytest.mark.parametrize(
    ("written", "used"),
    [
        ("sqlite:///./eirc.db", "sqlite+aiosqlite:///./eirc.db"),
        ("sqlite:////var/lib/eirc/eirc.db", "sqlite+aiosqlite:////var/lib/eirc/eirc.db"),
        ("sqlite+pysqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://eirc:p%40ss@db:5432/eirc", "postgresql+asyncpg://eirc:p%40ss@db:5432/eirc"),
        ("postgres://eirc@db/eirc", "postgresql+asyncpg://eirc@db/eirc"),
        ("postgresql+psycopg2://eirc@db/eirc", "postgresql+asyncpg://eirc@db/eirc"),
        ("postgresql+asyncpg://eirc@db/eirc", "postgresql+asyncpg://eirc@db/eirc"),
        # libpq's sslmode is asyncpg's ssl.
        (
            "postgresql://eirc@db/eirc?sslmode=require",
            "postgresql+asyncpg://eirc@db/eirc?ssl=require",
        ),
        ("  sqlite:///x.db\n", "sqlite+aiosqlite:///x.db"),
    ],
)
def test_urls_as_operators_write_them_get_the_async_driver(written: str, used: str) -> None:
    assert normalize_database_url(written) == used
    assert Settings(_env_file=None, database_url=written).database_url == used


@pytest.mark.parametrize(
    ("written", "named"),
    [
        ("mysql://eirc:hunter2-secret@db/eirc", "mysql://"),
        ("postgress://eirc:hunter2-secret@db/eirc", "postgress://"),
        ("eirc:hunter2-secret@db/eirc", "not a URL"),
        ("./eirc.db", "not a URL"),
        ("", "not a URL"),
    ],
)
def test_unusable_urls_are_refused_with_what_to_write(written: str, named: str) -> None:
    with pytest.raises(UnsafeSettingsError) as refused:
        Settings(_env_file=None, database_url=written)
    message = str(refused.value)
    assert "GATEWAY_DATABASE_URL" in message and named in message
    assert "sqlite:///" in message and "postgresql://" in message
    assert "hunter2" not in message  # the URL's password is never quoted


def test_engines_and_migrations_get_the_async_driver_too() -> None:
    # Places that take a URL directly (the CLI, migrations, tests) normalise it as well.
    engine = create_engine("postgresql://eirc@db.invalid/eirc")
    assert engine.dialect.driver == "asyncpg"
    engine = create_engine("sqlite:///./never-opened.db")
    assert engine.dialect.driver == "aiosqlite" and engine.dialect.is_async
    # With one thread hop per statement (core/platform/sqlite_driver.py).
    assert isinstance(engine.dialect, OneHopSQLiteDialect)
    assert (
        alembic_config("postgres://eirc@db/eirc").attributes["database_url"]
        == "postgresql+asyncpg://eirc@db/eirc"
    )


def test_db_upgrade_works_with_a_plain_sqlite_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A new user's first command, in an empty directory, with the URL as SQLAlchemy's docs write it.
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(
        app, ["db", "upgrade"], env={"GATEWAY_DATABASE_URL": "sqlite:///./gateway.db"}
    )
    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    with sqlite3.connect(tmp_path / "gateway.db") as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"accounts", "outbox", "alembic_version"} <= tables


async def test_sqlite_runs_in_wal_mode_with_every_commit_synced(tmp_path: Path) -> None:
    """Readers never wait for a writer, and a commit is as durable as before (FULL)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'gateway.db'}")
    try:
        async with engine.connect() as connection:
            assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await connection.scalar(text("PRAGMA synchronous")) == 2  # FULL
    finally:
        await engine.dispose()
    # The mode is kept in the file: any other client opens it in WAL too.
    with sqlite3.connect(tmp_path / "gateway.db") as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
