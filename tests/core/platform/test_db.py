"""The database engine (core/platform/db.py): SQLite transactions cannot deadlock each other."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import text

from core.platform.db import create_engine, create_sessionmaker, transaction


async def test_a_sqlite_transaction_that_reads_then_writes_waits_for_a_writer(
    tmp_path: Path,
) -> None:
    """The accounts import reads the accounts into a temporary table, then updates them; the
    dispatcher meanwhile updates the outbox. On SQLite's deferred transactions the reader holds
    a shared lock the writer's commit waits for, while the reader's write waits for the writer:
    SQLite breaks the circle by failing one with "database is locked" (seen in CI). Begun
    IMMEDIATE at its first write, a transaction holds the write lock before it reads, and the
    other waits at its own BEGIN instead: both commit."""
    engine = create_engine(f"sqlite:///{tmp_path / 'eirc.db'}")
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE t (n INTEGER)"))
        await connection.execute(text("INSERT INTO t VALUES (0)"))
    sessionmaker = create_sessionmaker(engine)
    has_read = asyncio.Event()

    async def reads_then_writes() -> None:
        async with transaction(sessionmaker) as session:
            await session.execute(text("CREATE TEMP TABLE seen (n INTEGER)"))
            await session.execute(text("INSERT INTO seen SELECT n FROM t"))
            has_read.set()
            await asyncio.sleep(0.3)  # the other transaction writes meanwhile
            await session.execute(text("UPDATE t SET n = n + 1"))

    async def writes() -> None:
        await has_read.wait()
        async with transaction(sessionmaker) as session:
            await session.execute(text("UPDATE t SET n = n + 10"))

    try:
        await asyncio.wait_for(asyncio.gather(reads_then_writes(), writes()), timeout=20)
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT n FROM t"))).scalar_one() == 11
    finally:
        await engine.dispose()
