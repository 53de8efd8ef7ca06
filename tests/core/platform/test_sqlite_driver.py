"""The one-hop aiosqlite cursor: what SQLAlchemy reads from it, and one thread hop a statement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import exc, text

from core.platform.db import create_engine


async def test_a_statement_is_one_call_on_the_connections_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'hops.db'}")
    calls: list[str] = []
    execute = aiosqlite.Connection._execute

    async def counted(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await execute(self, fn, *args, **kwargs)  # type: ignore[no-untyped-call]

    try:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))  # the connection is made and ready
            monkeypatch.setattr(aiosqlite.Connection, "_execute", counted)
            rows = (await connection.execute(text("SELECT 1 UNION SELECT 2"))).all()
            assert [tuple(row) for row in rows] == [(1,), (2,)]
            # aiosqlite's own cursor would be four: create, execute, fetch, close.
            assert calls == ["_run"]
    finally:
        await engine.dispose()


async def test_rows_counts_and_errors_are_what_sqlalchemy_expects(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'cursor.db'}")
    try:
        async with engine.begin() as connection:
            await connection.execute(text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT UNIQUE)"))
            inserted = await connection.execute(text("INSERT INTO t (v) VALUES ('a')"))
            assert inserted.lastrowid == 1 and inserted.rowcount == 1
            many = await connection.execute(
                text("INSERT INTO t (v) VALUES (:v)"), [{"v": "b"}, {"v": "c"}]
            )
            assert many.rowcount == 2
            # RETURNING: the rows come back, and the count covers them.
            returned = await connection.execute(
                text("UPDATE t SET v = v || '!' WHERE id > 1 RETURNING id, v")
            )
            assert sorted(tuple(row) for row in returned) == [(2, "b!"), (3, "c!")]
            updated = await connection.execute(text("UPDATE t SET v = 'z' WHERE id = 99"))
            assert updated.rowcount == 0
            with pytest.raises(exc.IntegrityError):
                await connection.execute(text("INSERT INTO t (v) VALUES ('a')"))
    finally:
        await engine.dispose()
